import json

import pytest
import torch

import summarize


def result(label, ckpt, wordings, multiple, depth, exact, token):
    return {"label": label, "ckpt": ckpt, "variant": "single", "haystack": "val", "wordings": wordings,
            "multiple": multiple, "length": 128 * multiple, "depth": depth, "exact": exact, "token": token, "n": 10}


def test_table_and_figure_from_results_files(tmp_path):
    ckpt = str(tmp_path / "rope" / "ckpt.pt")
    (tmp_path / "rope").mkdir()
    torch.save({"model_config": {}, "model": {}, "history": {"val_loss": [6.7, 1.234]}}, ckpt)
    rope = [result(label, ckpt, w, m, d, exact, 0.9)
            for label, exact in (("rope", 1.0), ("rope+yarn", 0.5)) for w in ("seen", "heldout")
            for m in (1, 2) for d, exact in ((0.0, exact), (1.0, 0.0 if m == 2 else exact))]
    nope = [result("nope", str(tmp_path / "gone" / "ckpt.pt"), w, m, d, 0.2, 0.25)
            for w in ("seen", "heldout") for m in (1, 2) for d in (0.0, 1.0)]
    (tmp_path / "a.json").write_text(json.dumps({"run": {"date": "2026-11-23 08:00 UTC", "machine": "2-core CPU",
                                                         "torch": "2.13.0", "command": "python eval_niah.py a"},
                                                 "results": rope}))
    (tmp_path / "b.json").write_text(json.dumps({"results": nope}))  # written before runs were recorded
    summarize.main([str(tmp_path / "a.json"), str(tmp_path / "b.json"), "--out_dir", str(tmp_path / "out"),
                    "--command", "bash reproduce.sh cpu"])
    md = (tmp_path / "out" / "results.md").read_text()
    assert "Made by `bash reproduce.sh cpu`." in md and "2026-11-23 08:00 UTC" in md and "2-core CPU" in md
    assert "| method | val loss | 1x (128) | 2x (256) |" in md
    seen = md.split("### single needle, val haystack, seen wordings")[1].split("###")[0]
    assert "| rope | 1.234 | 100 (90.0) | 50 (90.0) |" in seen  # the mean over the two depths
    assert "| rope+yarn | 1.234 | 50 (90.0) | 25 (90.0) |" in seen
    assert "| nope |  | 20 (25.0) | 20 (25.0) |" in seen  # no checkpoint here: no val loss
    assert "### single needle, val haystack, heldout wordings" in md
    assert "`python eval_niah.py a`" in md and "`not recorded`" in md
    assert (tmp_path / "out" / "accuracy_vs_length.png").stat().st_size > 10_000


@pytest.mark.parametrize("content, message", [(None, "cannot be read"), ("{not json", "cannot be read"),
                                              ('{"args": {}}', "no results in it")])
def test_bad_results_file_is_one_line(tmp_path, capsys, content, message):
    path = tmp_path / "results.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(SystemExit, match=message):
        summarize.main([str(path), "--out_dir", str(tmp_path / "out")])
    assert not (tmp_path / "out").exists()  # nothing written


def test_one_arm_from_several_seeds_is_one_row_with_its_range(tmp_path):
    paths = []
    for seed, exact in ((1337, 0.9), (2, 0.3), (3, 0.7)):  # the same arm (label) in three files: three seeds
        (tmp_path / str(seed) / "repo").mkdir(parents=True)
        ckpt = str(tmp_path / str(seed) / "repo" / "ckpt.pt")
        torch.save({"history": {"val_loss": [2.0, 1.0 + seed % 10 / 10], "probe_iter": [100, 200],
                                "probe_exact": [50.0, 80.0]}}, ckpt)
        rows = [result("repo", ckpt, "heldout", m, d, exact if m == 1 else 0.0, 0.8) for m in (1, 2) for d in (0, 1)]
        paths.append(tmp_path / f"{seed}.json")
        paths[-1].write_text(json.dumps({"results": rows}))
    once = [result("nope", str(tmp_path / "none.pt"), "heldout", m, 0, 0.25, 0.5) for m in (1, 2)]
    (tmp_path / "nope.json").write_text(json.dumps({"results": once}))
    summarize.main([*map(str, paths), str(tmp_path / "nope.json"), "--out_dir", str(tmp_path / "out")])
    md = (tmp_path / "out" / "results.md").read_text()
    # val losses 1.7, 1.2, 1.3 -> 1.400; exact 90, 30, 70 -> mean 63, range 30-90, two seeds answer at 1x
    assert "| repo (3 seeds, 2 ≥ 50% at 1x) | 1.400 | 200, 200, 200 | 63 [30-90] (80.0) | 0 [0-0] (80.0) |" in md
    assert "| nope |  | ? | 25 (50.0) | 25 (50.0) |" in md  # one seed: no range; no checkpoint: no probe
    (tmp_path / "1337" / "repo" / "ckpt.pt").unlink()  # one seed's checkpoint is not on this machine
    summarize.main([*map(str, paths), "--out_dir", str(tmp_path / "out")])
    md = (tmp_path / "out" / "results.md").read_text()
    assert "| repo (3 seeds, 2 ≥ 50% at 1x) | 1.250 (2 of 3 seeds) | ?, 200, 200 | 63 [30-90] (80.0) |" in md


def test_seeds_that_answer_the_multi_key_needle_are_counted_beside_the_single_needles(tmp_path):
    """Where an arm was evaluated on the multi-key needle too, its single-needle rows also say how many seeds answer
    that (the key looked up, not just a needle found), and the multi-key table names its chance level."""
    paths = []
    for seed, single, multikey in ((1, 1.0, 0.25), (2, 0.9, 0.95), (3, 0.8, 0.2)):
        rows = [result("rope", "none.pt", "heldout", m, 0, single, 0.9) | {"n": 20 // m} for m in (1, 2)]
        rows += [{**result("rope", "none.pt", "heldout", m, 0, multikey, 0.7), "variant": "multikey"} for m in (1, 2)]
        paths.append(tmp_path / f"{seed}.json")
        paths[-1].write_text(json.dumps({"results": rows}))
    summarize.main([*map(str, paths), "--out_dir", str(tmp_path / "out")])
    md = (tmp_path / "out" / "results.md").read_text()
    single = md.split("### single needle")[1].split("###")[0]
    assert "| rope (3 seeds, 3 ≥ 50% at 1x (1 of 3 on the multi-key needle)) |" in single
    assert "mean over 1 depths x (20 at 1x, 10 at 2x) samples" in single  # lengths evaluated with other counts
    multikey = md.split("### multikey needle")[1].split("###")[0]
    assert "Chance: 25%" in multikey and "| rope (3 seeds, 1 ≥ 50% at 1x) |  | 47 [20-95] (70.0) |" in multikey


def test_fitted_beta_of_several_seeds_is_one_row_with_each_c(tmp_path):
    paths = []
    for seed, c in ((1337, 0.112), (2, 0.00742)):  # drope.py fits another c for every seed
        rows = [{**result(f"drope+beta{c:.3g}", "none.pt", "heldout", m, 0, 0.5, 0.5), "pe": "drope",
                 "logit_scale_c": c} for m in (1, 2)]
        rows += [{**result("drope+beta0.412", "none.pt", "heldout", m, 0, 0.0, 0.5), "pe": "drope",
                  "logit_scale_c": 0.412} for m in (1, 2)]  # a c given as a number: its own row, as labelled
        paths.append(tmp_path / f"{seed}.json")
        paths[-1].write_text(json.dumps({"args": {"logit_scale_c": ["fitted", 0.412]}, "results": rows}))
    summarize.main([*map(str, paths), "--out_dir", str(tmp_path / "out")])
    md = (tmp_path / "out" / "results.md").read_text()
    assert "| drope+fitted beta (2 seeds, 2 ≥ 50% at 1x; c = 0.112, 0.00742) |  | 50 [50-50] (50.0) |" in md
    assert "| drope+beta0.412 (2 seeds, 0 ≥ 50% at 1x) |  | 0 [0-0] (50.0) |" in md


def test_runs_with_the_niah_probe_say_when_they_learned_the_lookup(tmp_path):
    """Checkpoints whose history has train.py's probe get a column with the first step at which it reached
    summarize.LEARNED % (or "no" and the best), per seed, and the probe curves as probe.png."""
    paths = []
    for name, curve, keyed in (("s1", [0, 8, 50, 92], {"probe_multikey": [0, 8, 25, 33]}), ("s2", [0, 0, 8, 17], {})):
        (tmp_path / name).mkdir()
        ckpt = str(tmp_path / name / "ckpt.pt")  # s1 probed the multi-key needle too (drawn dashed), s2 is older
        torch.save({"history": {"val_loss": [1.5], "probe_iter": [0, 250, 500, 750], "probe_exact": curve, **keyed}},
                   ckpt)
        paths.append(tmp_path / f"{name}.json")
        paths[-1].write_text(json.dumps({"results": [result(name, ckpt, "heldout", 1, 0, 0.5, 0.5)]}))
    summarize.main([*map(str, paths), "--out_dir", str(tmp_path / "out")])
    md = (tmp_path / "out" / "results.md").read_text()
    assert f"| method | val loss | probe ≥ {summarize.LEARNED}% at step | 1x (128) |" in md
    assert "| s1 | 1.500 | 750 | 50 (50.0) |" in md and "| s2 | 1.500 | no (best 17%) | 50 (50.0) |" in md
    assert (tmp_path / "out" / "probe.png").stat().st_size > 10_000 and "![the NIAH probe" in md


def test_without_its_checkpoint_a_run_takes_val_loss_and_probe_from_the_record_in_results_json(tmp_path):
    """Checkpoints are not committed: eval_niah.py records the val loss and the probe in results.json, so the
    summary of a study on another machine is whole; where the checkpoint is here, it is read as before."""
    gone = str(tmp_path / "gone" / "ckpt.pt")
    training = {gone: {"eval_iter": [0, 500], "val_loss": [6.7, 1.25], "probe_iter": [0, 500],
                       "probe_exact": [0, 83]}}
    (tmp_path / "a.json").write_text(json.dumps({"training": training,
                                                 "results": [result("rope", gone, "heldout", 1, 0, 0.5, 0.5)]}))
    summarize.main([str(tmp_path / "a.json"), "--out_dir", str(tmp_path / "out")])
    assert "| rope | 1.250 | 500 | 50 (50.0) |" in (tmp_path / "out" / "results.md").read_text()


def test_headline_is_each_method_at_its_papers_setting_with_its_seed_range(tmp_path):
    """headline.md (README's table) and headline.png: only HEADLINE's labels, under their readers' names, held-out
    wordings only, the mean over seeds with the lowest and highest, and how many seeds answer the single needle."""
    paths = []
    for seed, exact in ((1337, 1.0), (2, 0.4)):
        rows = [result(label, "none.pt", wordings, m, 0, exact / m if wordings == "heldout" else 1.0, 0.9)
                | {"variant": variant}
                for label in ("rope", "rope+yarn", "rope+pi") for wordings in ("seen", "heldout")
                for variant in ("single", "multikey") for m in (1, 2)]
        paths.append(tmp_path / f"{seed}.json")
        paths[-1].write_text(json.dumps({"results": rows}))
    summarize.main([*map(str, paths), "--out_dir", str(tmp_path / "out")])
    md = (tmp_path / "out" / "headline.md").read_text()
    assert "| method | seeds (≥ 50% at 1x) | single 1x | single 2x | multi-key 1x | multi-key 2x |" in md
    # held-out: 100 and 40 at 1x, 50 and 20 at 2x; one seed of two answers >= 50% at 1x
    assert "| RoPE | 2 (1) | 70 [40-100] | 35 [20-50] | 70 [40-100] | 35 [20-50] |" in md
    assert "| RoPE + YaRN | 2 (1) |" in md and "rope+pi" not in md and "PI" not in md
    assert "chance level is 25%" in md
    assert (tmp_path / "out" / "headline.png").stat().st_size > 10_000

"""
The plotting helpers the scripts share: a figure written atomically, the line style of a many-line figure, and the
accuracy-vs-length figure that eval_niah.py draws for one evaluation and summarize.py for a whole study.

matplotlib draws to files only (the Agg backend): the scripts run on machines without a screen.
"""
import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from data.format import write_atomic
from data.niah import MULTIKEY_CHANCE


def save_figure(fig, path):
    """Writes fig as a PNG to path (temp file + rename, so a kill never leaves half an image) and closes it."""
    write_atomic(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100))
    plt.close(fig)


def line_style(i):
    """(colour, marker) of the i-th line of a figure: tab20's 20 colours, then again with squares (the study has 21
    rows), so no two lines look alike."""
    return plt.cm.tab20(i % 20), "os"[i // 20 % 2]


def plot_accuracy(results, lengths, path, caption=None):
    """Exact match % against the context length: one panel per variant and wordings, one line (the same colour in
    every panel) per checkpoint[+setting], first haystack only. summarize.py draws the whole study with it.
    caption: a line over the panels (what was run, where, when). Multi-key panels draw their chance level: the score
    of a model that finds a needle, not the asked key's."""
    haystack = results[0]["haystack"]
    results = [r for r in results if r["haystack"] == haystack]
    panels = list(dict.fromkeys((r["variant"], r["wordings"]) for r in results))
    labels = list(dict.fromkeys(r["label"] for r in results))
    fig, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels) + 2, max(3.5, 1 + 0.2 * len(labels))),
                             squeeze=False, sharey=True, layout="constrained")
    for ax, (variant, wordings) in zip(axes[0], panels):
        for i, label in enumerate(labels):
            rows = [r for r in results if r["label"] == label and r["variant"] == variant and r["wordings"] == wordings]
            if rows:
                acc = [100 * np.mean([r["exact"] for r in rows if r["multiple"] == m]) for m in lengths]
                color, marker = line_style(i)
                ax.plot(lengths, acc, marker + "-", color=color, label=label)
        if variant == "multikey":
            ax.axhline(100 * MULTIKEY_CHANCE, color="gray", lw=1, ls=":",
                       label=f"multi-key chance ({100 * MULTIKEY_CHANCE:.0f}%: any of the needles)")
        ax.set_xscale("log", base=2)
        ax.set_xticks(lengths, [f"{m}x" for m in lengths])
        ax.set_ylim(-3, 103)
        ax.set_xlabel("context length (x training length)")
        ax.set_title(f"{variant} needle, {haystack} haystack, {wordings} wordings", fontsize=9)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("exact match %")
    handles = {h.get_label(): h for ax in axes[0] for h in ax.get_lines()}  # each label once, in the order drawn
    fig.legend(handles.values(), handles.keys(), loc="outside right upper", fontsize=8)
    if caption:
        fig.suptitle(caption, fontsize=8)
    save_figure(fig, path)

"""Drills made in this process, in worker processes or read from a prepared table are the same rows
(data/drills.py), and a table that no longer matches the code or the data is refused."""
import os

import numpy as np
import pytest

from data.drills import CHECKED_ROWS, DrillMaker, table_path


def test_prepared_drills_are_the_drills_made_from_their_seeds(tiny_data, tmp_path):
    maker, directory = DrillMaker(tiny_data), str(tmp_path / "drills")
    assert maker.prepare(directory, [5, 3, 9, 3], 65) == 3  # a seed drawn twice is one drill
    reader = DrillMaker(tiny_data, prepared_dir=directory)
    seeds = [9, 100, 3, 5, 3]
    for got, expected in zip(reader(seeds, 65), maker(seeds, 65)):  # in the seeds' order, the unprepared one made
        assert got.shape == (5, 65) and np.array_equal(got, expected)
    assert (reader.read, reader.made) == (4, 1)
    assert all(np.array_equal(a, b) for a, b in zip(reader([9, 3], 49), maker([9, 3], 49)))  # no table of 49: made
    assert (reader.read, reader.made) == (4, 3)
    # preparing again adds only the seeds the table lacks; the table stays sorted by seed
    assert maker.prepare(directory, [3, 7, 1], 65) == 2
    table = np.load(table_path(directory, 65))
    assert table["seed"].tolist() == [1, 3, 5, 7, 9]
    reader = DrillMaker(tiny_data, prepared_dir=directory)
    assert all(np.array_equal(a, b) for a, b in zip(reader([7, 1, 9], 65), maker([7, 1, 9], 65)))
    assert (reader.read, reader.made) == (3, 0)
    assert not any(name.endswith(".tmp") for name in os.listdir(directory))


def test_a_table_that_differs_from_the_drills_made_here_is_refused(tiny_data, tmp_path):
    maker, directory = DrillMaker(tiny_data), str(tmp_path / "drills")
    maker.prepare(directory, range(CHECKED_ROWS), 65)  # every row is one that opening the table remakes
    path = table_path(directory, 65)
    table = np.load(path)
    table["tokens"][3, 10] += 1  # what other data, or another make_drill, would have made
    with open(path, "wb") as f:
        np.save(f, table)
    with pytest.raises(ValueError, match="its drills_65.npy differs from the drills made here"):
        DrillMaker(tiny_data, prepared_dir=directory)
    with pytest.raises(ValueError, match="holds no prepared drills"):
        DrillMaker(tiny_data, prepared_dir=str(tmp_path))

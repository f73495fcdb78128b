"""Readers: each format on a small fixture the test writes, errors naming file and line, and the
real files when present."""
import json

import numpy as np
import pytest

from mindref.data import leave_one_out, strong_generalisation
from mindref.readers import (
    DataFormatError,
    read_comirec,
    read_interactions_csv,
    read_movielens_1m,
    read_movielens_100k,
    read_sequences,
)


def write_ml100k(folder, data_lines=None):
    (folder / "u.data").write_text("\n".join(data_lines or [
        "1\t10\t5\t300", "1\t20\t3\t100", "2\t10\t4\t50", "1\t30\t4\t200", "2\t30\t2\t60"]) + "\n")
    flags = lambda *on: "|".join("1" if g in on else "0" for g in range(19))  # noqa: E731
    (folder / "u.item").write_bytes("\n".join([
        f"10|Caf\xe9 (1995)|01-Jan-1995||http://x|{flags(1, 3)}",
        f"20|B (1996)|01-Jan-1996||http://x|{flags(5)}",
        f"30|C (1997)|01-Jan-1997||http://x|{flags()}"]).encode("latin-1"))
    (folder / "u.user").write_text("1|24|M|technician|85711\n2|53|F|other|94043\n")


def test_movielens_100k_fixture(tmp_path):
    write_ml100k(tmp_path)
    ds = read_movielens_100k(tmp_path)
    assert ds.num_items == 4 and len(ds.sequences) == 2
    np.testing.assert_array_equal(ds.sequences[0], [2, 3, 1])  # user 1 by time: 20, 30, 10
    np.testing.assert_array_equal(ds.sequences[1], [1, 3])  # user 2: 10 (t=50), 30 (t=60)
    genre = ds.item_fields[0]
    assert genre.shape == (4, 2)  # movie 10 has two genres: a multi-valued field
    assert set(genre[1]) == {1, 2} and genre[2, 0] == 3 and np.all(genre[3] == 0) and np.all(genre[0] == 0)
    assert ds.item_labels[1] == "Caf\xe9 (1995)"  # latin-1 decoded
    assert ds.profile_names == ("age", "gender", "occupation")
    assert np.all(ds.profiles > 0) and ds.profiles[0, 0] != ds.profiles[1, 0]  # 24 and 53 differ


@pytest.mark.parametrize("line, match", [
    ("1\t10\t5", r"u.data:2: expected user, item, rating, timestamp"),
    ("1\tten\t5\t300", r"u.data:2: item must be an integer"),
])
def test_movielens_malformed_line_is_named(tmp_path, line, match):
    write_ml100k(tmp_path, ["1\t10\t5\t300", line])
    with pytest.raises(DataFormatError, match=match):
        read_movielens_100k(tmp_path)


def test_movielens_unknown_movie_is_named(tmp_path):
    write_ml100k(tmp_path, ["1\t10\t5\t300", "1\t99\t5\t301"])
    with pytest.raises(DataFormatError, match=r"u.item: 1 movie\(s\) .* missing here, e.g. \[99\]"):
        read_movielens_100k(tmp_path)


def test_non_utf8_is_named(tmp_path):
    write_ml100k(tmp_path)
    (tmp_path / "u.user").write_bytes(b"1|24|M|techn\xe9|85711\n")
    with pytest.raises(DataFormatError, match=r"u.user:1: not valid utf-8"):
        read_movielens_100k(tmp_path)


def test_movielens_1m_fixture(tmp_path):
    (tmp_path / "ratings.dat").write_text("1::1193::5::978300760\n1::661::3::978302109\n2::661::4::1\n")
    (tmp_path / "movies.dat").write_bytes("1193::One (1975)::Drama\n661::James (1996)::Animation|Children's\n"
                                          .encode("latin-1"))
    (tmp_path / "users.dat").write_text("1::F::1::10::48067\n2::M::56::16::70072\n")
    ds = read_movielens_1m(tmp_path)
    np.testing.assert_array_equal(ds.sequences[0], [2, 1])  # 1193 -> 2 (ids sorted: 661, 1193)
    assert sorted(ds.item_fields[0][1]) == [1, 2] and ds.item_fields[0][2, 0] == 3
    with pytest.raises(DataFormatError, match=r"ratings.dat:1: expected UserID::MovieID"):
        (tmp_path / "ratings.dat").write_text("1,1193,5,978300760\n")
        read_movielens_1m(tmp_path)


def test_sequences_and_category_rules(tmp_path):
    (tmp_path / "s.txt").write_text("1 1 2 3\n2 3 1\n")
    (tmp_path / "a.json").write_text(json.dumps({"1": [7, 8, 9], "2": [8], "3": [7, 10]}))
    last = read_sequences(tmp_path / "s.txt", tmp_path / "a.json", "last")
    np.testing.assert_array_equal(last.sequences[1], [3, 1])
    assert [int(c) for c in last.item_fields[0][1:, 0]] == [2, 1, 3]  # 9, 8, 10 -> ranks 2, 1, 3
    first = read_sequences(tmp_path / "s.txt", tmp_path / "a.json", "first", brand=True)
    assert first.field_names == ("category", "brand")
    every = read_sequences(tmp_path / "s.txt", tmp_path / "a.json", "all")
    assert every.item_fields[0].shape == (4, 3)
    none = read_sequences(tmp_path / "s.txt")
    assert none.item_fields == ()
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(DataFormatError, match="not valid JSON"):
        read_sequences(tmp_path / "s.txt", tmp_path / "bad.json")
    (tmp_path / "s.txt").write_text("1 1 2\n7\n")
    with pytest.raises(DataFormatError, match=r"s.txt:2: expected 'user item"):
        read_sequences(tmp_path / "s.txt")


def test_comirec_files(tmp_path):
    (tmp_path / "book_train.txt").write_text("0,5,0\n0,6,1\n0,7,2\n")
    (tmp_path / "book_valid.txt").write_text("1,6,0\n1,5,1\n")
    (tmp_path / "book_test.txt").write_text("2,7,0\n2,6,1\n")
    (tmp_path / "book_item_cate.txt").write_text("5,1\n6,1\n7,2\n")
    ds, splits = read_comirec(tmp_path, "book")
    assert {k: list(v) for k, v in splits.items()} == {"train": [0], "valid": [1], "test": [2]}
    np.testing.assert_array_equal(ds.sequences[1], [2, 1])
    (tmp_path / "book_test.txt").write_text("0,7,0\n")
    with pytest.raises(DataFormatError, match=r"book_test.txt:1: user 0 also appears in the train split"):
        read_comirec(tmp_path, "book")


def test_generic_csv(tmp_path):
    (tmp_path / "x.csv").write_text("user,item,timestamp,category\nu1,apple,2,fruit\nu1,kale,1,veg\n"
                                    "u2,apple,5,fruit\n")
    ds = read_interactions_csv(tmp_path / "x.csv")
    np.testing.assert_array_equal(ds.sequences[0], [2, 1])  # kale (t=1) before apple
    assert ds.field_names == ("category",)
    (tmp_path / "x.csv").write_text("u1,apple,2,fruit\nu1,apple,3,veg\n")
    with pytest.raises(DataFormatError, match=r"x.csv:2: item 'apple' has category 'veg'"):
        read_interactions_csv(tmp_path / "x.csv")
    (tmp_path / "x.csv").write_text("u1,apple,1\nu1,pear,soon\n")
    with pytest.raises(DataFormatError, match="x.csv:2: timestamp must be a finite number"):
        read_interactions_csv(tmp_path / "x.csv")
    (tmp_path / "x.csv").write_text("user,item,timestamp\n")
    with pytest.raises(DataFormatError, match="x.csv: no interactions found"):
        read_interactions_csv(tmp_path / "x.csv")


def test_missing_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="u.data: no such file"):
        read_movielens_100k(tmp_path)


def test_protocols_on_a_fixture(tmp_path):
    (tmp_path / "s.txt").write_text("1 1 2 3 4 5\n2 5 4\n3 2\n")
    ds = read_sequences(tmp_path / "s.txt")
    train, valid, test = leave_one_out(ds, L=3)
    np.testing.assert_array_equal(test.hist[0], [2, 3, 4])  # the last 3 items before item 5
    assert [list(t) for t in test.targets] == [[5]]  # only user 1 has >= 3 items
    assert [list(t) for t in valid.targets] == [[4]]
    # user 1 trains on the prefixes of [1, 2, 3]; user 2 (2 items) on all of its [5, 4]
    assert sorted(train.target.tolist()) == [2, 3, 4]
    tr, va, te = strong_generalisation(ds, L=3, splits={"train": [1], "valid": [2], "test": [0]})
    assert tr.target.tolist() == [4]
    np.testing.assert_array_equal(te.hist[0], [2, 3, 4])  # first 80% of 5 items is 4 items -> last 3
    assert list(te.targets[0]) == [5]


def test_real_files(shared_data):
    ml = read_movielens_100k(shared_data / "ml-100k")
    assert (len(ml.sequences), ml.num_items - 1, sum(map(len, ml.sequences))) == (943, 1682, 100000)
    assert ml.item_labels[ml.raw_item_ids.index(1)] == "Toy Story (1995)"
    beauty = read_sequences(shared_data / "amazon-beauty" / "Beauty.txt",
                            shared_data / "amazon-beauty" / "Beauty_item2attributes.json")
    sizes = (len(beauty.sequences), beauty.num_items - 1, sum(map(len, beauty.sequences)))
    assert sizes == (22363, 12101, 198502)
    assert np.all(beauty.item_fields[0][1:, 0] > 0)  # every item has a category

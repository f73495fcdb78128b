"""Fuzzing the data readers and the command line with generated malformed files: every failure is
a clean error naming the file (and line), never a traceback from deep inside NumPy."""
import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mindref.cli import main
from mindref.data import leave_one_out
from mindref.readers import DataFormatError, read_interactions_csv, read_movielens_100k, read_sequences

FUZZ = settings(suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
                deadline=None)
ids = st.integers(1, 6).map(str)
junk = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=12)
token = st.one_of(ids, junk, st.sampled_from(["", "-1", "1.5", "nan", "1e400", "0", "ABC", "9" * 30]))


def csv_line():
    good = st.tuples(ids, ids, st.integers(0, 99).map(str)).map(",".join)
    bad = st.lists(token, min_size=0, max_size=5).map(",".join)
    return st.one_of(good, good, bad)


def sequences_line():
    good = st.lists(ids, min_size=2, max_size=6).map(" ".join)
    return st.one_of(good, good, st.lists(token, max_size=4).map(" ".join))


def write(path, lines, garbage: bytes = b""):
    path.write_bytes(("\n".join(lines)).encode("utf-8") + garbage)
    return path


def assert_clean(err: Exception, path) -> None:
    assert isinstance(err, (DataFormatError, FileNotFoundError)), repr(err)
    assert str(path) in str(err)


def check_dataset(ds) -> None:
    """A dataset that loaded must be consistent: ids in range, time order kept, fields aligned."""
    assert all(len(s) >= 1 and s.min() >= 1 and s.max() < ds.num_items for s in ds.sequences)
    assert all(f.shape[0] == ds.num_items and not f[0].any() for f in ds.item_fields)
    assert ds.profiles.shape[0] == len(ds.sequences)


@FUZZ
@given(lines=st.lists(csv_line(), max_size=12), garbage=st.sampled_from([b"", b"\xff\xfe", b"\n\n"]))
def test_csv_reader(tmp_path_factory, lines, garbage):
    path = write(tmp_path_factory.mktemp("csv") / "x.csv", lines, garbage)
    try:
        check_dataset(read_interactions_csv(path))
    except Exception as err:  # noqa: BLE001 - the type is what is checked
        assert_clean(err, path)


@FUZZ
@given(lines=st.lists(sequences_line(), max_size=8), attrs=st.one_of(
    st.none(), st.dictionaries(ids, st.lists(st.integers(-2, 5), max_size=3), max_size=6),
    st.sampled_from(["[]", "{", '{"1": "x"}', '{"1": [1.5]}'])))
def test_sequences_reader(tmp_path_factory, lines, attrs):
    folder = tmp_path_factory.mktemp("seq")
    path = write(folder / "s.txt", lines)
    attr_path = None
    if attrs is not None:
        attr_path = folder / "a.json"
        attr_path.write_text(attrs if isinstance(attrs, str) else json.dumps(attrs))
    try:
        check_dataset(read_sequences(path, attr_path, "all"))
    except Exception as err:  # noqa: BLE001
        assert isinstance(err, (DataFormatError, FileNotFoundError)), repr(err)
        assert str(path) in str(err) or str(attr_path) in str(err)


@FUZZ
@given(which=st.sampled_from(["u.data", "u.item", "u.user"]), line=st.lists(token, max_size=25),
       sep=st.sampled_from(["\t", "|", ","]))
def test_movielens_reader_with_one_bad_line(tmp_path_factory, which, line, sep):
    folder = tmp_path_factory.mktemp("ml")
    flags = "|".join(["0"] * 18 + ["1"])
    files = {"u.data": ["1\t1\t5\t10", "1\t2\t3\t11", "2\t1\t4\t12"],
             "u.item": [f"1|A (1990)|01-Jan-1990||url|{flags}", f"2|B (1991)|01-Jan-1991||url|{flags}"],
             "u.user": ["1|24|M|engineer|00000", "2|53|F|other|11111"]}
    files[which].insert(1, sep.join(line))
    for name, content in files.items():
        write(folder / name, content)
    try:
        check_dataset(read_movielens_100k(folder))
    except Exception as err:  # noqa: BLE001 - a consistency error may name another file of the folder
        assert_clean(err, folder)


@FUZZ
@given(lines=st.lists(csv_line(), max_size=10))
def test_cli_train_on_malformed_csv(tmp_path_factory, capsys, lines):
    """`mindref train` on any such file trains or exits 2 with 'mindref train: error: ...'."""
    folder = tmp_path_factory.mktemp("cli")
    path = write(folder / "x.csv", lines)
    code = main(["train", "--data-format", "csv", "--data-path", str(path), "--epochs", "1", "--dim", "4",
                 "--K", "2", "--hidden", "4", "--max-len", "5", "--negatives", "4",
                 "--out", str(folder / "run")])
    err = capsys.readouterr().err
    assert code in (0, 2), err
    if code == 2:
        assert err.splitlines()[-1].startswith("mindref train: error: ") and "Traceback" not in err


def test_one_item_histories_give_a_clear_error(tmp_path, capsys):
    path = write(tmp_path / "x.csv", ["1,1,1", "2,2,1", "3,1,1"])
    ds = read_interactions_csv(path)
    train, _, test = leave_one_out(ds, 5)
    assert len(train.target) == 0 and len(test.users) == 0
    code = main(["train", "--data-format", "csv", "--data-path", str(path), "--out", str(tmp_path / "r")])
    assert code == 2
    assert "no training examples" in capsys.readouterr().err


def test_silent_misreadings_are_refused(tmp_path):
    """Inputs that would otherwise load into a wrong dataset without a word."""
    dup = write(tmp_path / "dup.txt", ["1 5 6 7", "2 5 6", "1 8 9"])  # user 1 twice: no order between lines
    cases = [(lambda: read_sequences(dup), "dup.txt:3: user 1 already has a sequence on line 1"),
             (lambda: read_interactions_csv(write(tmp_path / "nan.csv", ["a,b,1", "a,c,nan"])),
              "nan.csv:2: timestamp must be a finite number"),
             (lambda: read_interactions_csv(write(tmp_path / "e.csv", ["a,b,1", ",c,2"])), "e.csv:2: empty"),
             (lambda: read_sequences(write(tmp_path / "s.txt", ["1 5 6"]),
                                     _json(tmp_path, {"5": "ab", "6": []})),
              "a.json: expected an object")]
    for read, message in cases:
        try:
            read()
        except DataFormatError as err:
            assert message in str(err), str(err)
        else:
            raise AssertionError(f"accepted: {message}")


def _json(folder, obj):
    path = folder / "a.json"
    path.write_text(json.dumps(obj))
    return path

from pathlib import Path

import pytest

from nexus_node.csvcheck import check_csv, detect_encoding
from nexus_node.errors import InvalidInput
from tests.conftest import dataset


def write(tmp_path: Path, data: bytes | str, name: str = "x.csv") -> Path:
    p = tmp_path / name
    p.write_bytes(data.encode() if isinstance(data, str) else data)
    return p


def rows(n: int, target: str = "1") -> str:
    return "a,b,y\n" + "".join(f"{i},{i % 3},{target}\n" for i in range(n))


def test_real_file_passes(insurance_csv):
    s = check_csv(insurance_csv, "charges")
    assert s.rows == 1338 and s.target_present == 1338 and s.encoding == "utf-8"


def test_windows_1252_file_is_detected():
    assert detect_encoding(dataset("book_banning.csv")) == "cp1252"


@pytest.mark.parametrize("data, target, fragment", [
    (b"", "y", "empty"),
    (b"\x00\x01\x02binary\x00", "y", "not a CSV"),
    ("just one column\n1\n2\n", "y", "single column"),
    (rows(20), "price", "'price' is not in the CSV"),
    (rows(20, target=""), "y", "empty in every row"),
    (rows(1), "y", "at least 10"),
    ("a,b,y\n", "y", "no data rows"),
    (rows(20), "  ", "no target column"),
])
def test_bad_uploads_get_a_message_that_says_what_to_fix(tmp_path, data, target, fragment):
    with pytest.raises(InvalidInput, match=fragment):
        check_csv(write(tmp_path, data), target)


def test_unknown_drop_column_is_refused(tmp_path):
    with pytest.raises(InvalidInput, match="columns to drop"):
        check_csv(write(tmp_path, rows(20)), "y", ["nope"])


def test_latin1_fallback_for_bytes_cp1252_cannot_decode(tmp_path):
    # 0x81 is undefined in cp1252, so only latin-1 reads this file.
    p = write(tmp_path, b"a,b,y\n" + b"".join(b"\x81%d,1,2\n" % i for i in range(20)))
    assert check_csv(p, "y").encoding == "latin-1"

import pytest

from nexus_node.errors import InvalidInput
from nexus_node.pipeline import csvio
from tests.conftest import dataset
from tests.pipeline.helpers import write_csv


def test_book_banning_falls_back_to_cp1252_and_keeps_the_characters():
    df, fmt = csvio.read_table(dataset("book_banning.csv"))
    assert fmt.encoding == "cp1252"
    assert df.shape == (931, 18)
    # 0x92 is cp1252's right single quote; latin-1 would have made it a control character.
    assert df["title"].str.contains("\u2019", regex=False).any()


def test_utf8_with_bom_is_recorded_and_the_bom_is_not_in_the_header(tmp_path):
    df, fmt = csvio.read_table(write_csv(tmp_path, "\ufeffa,b\n1,2\n".encode("utf-8")))
    assert fmt.encoding == "utf-8-sig"
    assert list(df.columns) == ["a", "b"]


def test_bytes_undefined_in_cp1252_fall_back_to_latin1(tmp_path):
    # 0x81 has no cp1252 character, so only latin-1 decodes this file.
    df, fmt = csvio.read_table(write_csv(tmp_path, b"name,v\nA\x81B,1\n"))
    assert fmt.encoding == "latin-1"
    assert df["name"].iloc[0] == "A\x81B"


def test_utf16_with_bom_is_decoded(tmp_path):
    df, fmt = csvio.read_table(write_csv(tmp_path, "a,b\n1,ü\n".encode("utf-16")))
    assert fmt.encoding == "utf-16"
    assert df["b"].iloc[0] == "ü"


def test_missing_markers_and_whitespace():
    df = csvio.parse_text(" a , b ,c\n 1 , x ,?\nNA,  ,null\nN/A,y, z \n")
    assert list(df.columns) == ["a", "b", "c"]
    assert df["a"].isna().tolist() == [False, True, True]
    assert df["b"].tolist()[0] == "x" and df["b"].isna().tolist() == [False, True, False]
    assert df["c"].isna().tolist() == [True, True, False] and df["c"].iloc[2] == "z"
    # "None" is a real category in many tables, not a missing marker.
    assert csvio.parse_text("a\nNone\n")["a"].iloc[0] == "None"


def test_semicolon_delimiter_is_detected():
    df = csvio.parse_text("a;b;c\n1;2,5;x\n")
    # The comma in "2,5" is a decimal comma (see tests/pipeline/test_tableformat.py).
    assert list(df.columns) == ["a", "b", "c"] and df["b"].iloc[0] == "2.5"


@pytest.mark.parametrize(
    "content, needle",
    [
        (b"", "empty"),
        (b"  \n\n ", "empty"),
        (b"a,b,c\n", "no data rows"),
        (b"PK\x03\x04\x14\x00\x00\x00rest", "Excel"),
        (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "PNG image"),
        (b"\x00\x01\x02\x03 rest", "binary data"),
        (b"a,b\n1,2\n3,4,5,6\n", "same number of fields"),
        (b"a, a\n1,2\n", "repeats column names"),
    ],
)
def test_unusable_files_say_what_to_fix(tmp_path, content, needle):
    with pytest.raises(InvalidInput, match=needle):
        csvio.read_table(write_csv(tmp_path, content))


def test_recorded_encoding_that_does_not_fit_is_refused():
    with pytest.raises(InvalidInput, match="does not decode as utf-8"):
        csvio.decode_bytes(b"a\n\x92\n", "utf-8")

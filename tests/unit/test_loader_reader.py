"""The loader's reading and checking of rows (pure: text in memory, a fixed clock)."""
import datetime as dt
import io
import json

import pytest

from loader import codes, reader
from loader.report import Report

NOW = dt.datetime(2026, 11, 22, 10, 0, tzinfo=dt.timezone.utc)


def good(body: str = "GCAAAA1111") -> str:
    return body + codes.check_char(body)


def check_all(rows, check_digit=True):
    v = reader.Validator(check_digit=check_digit, now=NOW)
    return v, [v.check(r) for r in rows]


def test_csv_rows_carry_their_physical_line_numbers():
    # given a CSV with a header, a blank line and a quoted field spanning two lines
    text = f'code,nominal,expiresAt\n{good("GCAA01")},1500.00,\n\n{good("GCAA02")},,2030-01-01T00:00:00Z\n"X\nY",,\n'
    # when read; then each row has its line number, empty cells are None
    rows = list(reader.read_csv(io.StringIO(text)))
    assert [(r[0], r[2], r[3]) for r in rows] == [(2, "1500.00", None), (4, None, "2030-01-01T00:00:00Z"),
                                                  (6, None, None)]


def test_csv_header_must_name_known_columns():
    # given headers without code, with an unknown column, with a repeated one; then FileError
    for header in ("nominal\n", "code,nominall\n", "code,code\n"):
        with pytest.raises(reader.FileError):
            list(reader.read_csv(io.StringIO(header + "X,Y\n")))
    # and an empty file has no rows; a code-only file is fine
    assert list(reader.read_csv(io.StringIO(""))) == []
    assert list(reader.read_csv(io.StringIO("code\nABCDEF1\n")))[0][1:4] == ("ABCDEF1", None, None)


def test_every_kind_of_bad_row_is_refused_with_its_reason():
    # given one row of each problem, CSV and JSON Lines alike
    ok = good("GCBB22")
    csv_text = "\n".join([
        "code,nominal,expiresAt",
        f"{ok},1500.00,2030-01-01T00:00:00Z",        # 2 fine
        "gcbad1,1500.00,",                            # 3 lower case
        f"{ok[:-1]}{'0' if ok[-1] != '0' else '1'},,",  # 4 wrong check character
        f"{good('GCCC33')},1500,",                    # 5 money without decimals
        f"{good('GCDD44')},0.00,",                    # 6 zero
        f"{good('GCEE55')},,31/12/2030",              # 7 not RFC 3339
        f"{good('GCFF66')},,2020-01-01T00:00:00Z",    # 8 already passed
        f"{ok},1500.00,2030-01-01T00:00:00Z",        # 9 repeats line 2
        "a,b,c,d",                                    # 10 too many fields
        ",1500.00,",                                  # 11 no code
    ]) + "\n"
    jsonl_text = "\n".join([
        json.dumps({"code": good("GCGG77"), "nominal": "10.00"}),    # 1 fine
        "not json",                                                  # 2
        json.dumps(["a list"]),                                      # 3
        json.dumps({"code": good("GCHH88"), "colour": "red"}),       # 4 unknown field
        json.dumps({"code": good("GCII99"), "nominal": 1500}),       # 5 number, not string
        json.dumps({"code": 12345678}),                              # 6 code not a string
        json.dumps({"code": good("GCJJ00"), "expiresAt": 17}),       # 7 time not a string
        json.dumps({"code": good("GCLL11") + "\n"}),                 # 8 a trailing newline
    ]) + "\n"
    # when checked
    _, csv_results = check_all(reader.read_csv(io.StringIO(csv_text)))
    _, jsonl_results = check_all(reader.read_jsonl(io.StringIO(jsonl_text)))
    # then the reasons are these, each on its line
    def outcome(r):
        return "OK" if type(r) is tuple else (None if r is None else (r.line, r.reason))
    assert [outcome(r) for r in csv_results] == [
        "OK", (3, "INVALID_CODE"), (4, "INVALID_CHECK_DIGIT"), (5, "INVALID_NOMINAL"),
        (6, "INVALID_NOMINAL"), (7, "INVALID_EXPIRES_AT"), (8, "EXPIRED"), None,
        (10, "INVALID_ROW"), (11, "INVALID_CODE")]
    assert [outcome(r) for r in jsonl_results] == [
        "OK", (2, "INVALID_ROW"), (3, "INVALID_ROW"), (4, "INVALID_ROW"), (5, "INVALID_NOMINAL"),
        (6, "INVALID_CODE"), (7, "INVALID_EXPIRES_AT"), (8, "INVALID_CODE")]
    assert csv_results[9].message == "the code is missing"


def test_valid_rows_carry_the_values_as_they_will_be_sent():
    # given rows with and without nominal and expiry (an offset, a fraction)
    rows = [(2, good("GCKK01"), "1500.00", "2030-06-01T12:00:00+03:00", None),
            (3, good("GCKK02"), None, None, None),
            (4, good("GCKK03"), None, "2030-06-01T09:00:00.250z", None),
            (5, good("GCKK04"), "1500.00", "2030-06-01T12:00:00+03:00", None)]
    _, out = check_all(rows)
    # then each is (line, code, (nominal, expiresAt in UTC, no CVC)), equal values shared
    assert [r[2] for r in out] == [("1500.00", "2030-06-01T09:00:00Z", None), (None, None, None),
                                   (None, "2030-06-01T09:00:00.250000Z", None),
                                   ("1500.00", "2030-06-01T09:00:00Z", None)]
    assert out[0][2] is out[3][2]
    assert [r[:2] for r in out] == [(2, good("GCKK01")), (3, good("GCKK02")), (4, good("GCKK03")),
                                    (5, good("GCKK04"))]


def test_without_check_digit_any_well_formed_code_passes():
    # given a code from another team without our check character
    rows = [(2, "VENDOR000001", None, None, None)]
    # then it is refused by default and accepted with check_digit=False
    assert check_all(rows)[1][0].reason == "INVALID_CHECK_DIGIT"
    assert type(check_all(rows, check_digit=False)[1][0]) is tuple


def test_duplicates_are_confirmed_by_a_second_pass_naming_the_first_line():
    # given a file where line 5 repeats line 2
    a, b = good("GCDUP1"), good("GCDUP2")
    raw = [(2, a, None, None, None), (3, b, None, None, None), (5, a, None, None, None)]
    v, out = check_all(raw)
    # when the second pass resolves the held-back row
    assert out[2] is None and len(v.suspects) == 1
    load, dupes = v.resolve_suspects(iter(raw))
    # then it is a duplicate of line 2, and nothing else is loaded
    assert load == [] and [(d.line, d.reason, d.message) for d in dupes] == [
        (5, "DUPLICATE_IN_FILE", "the same code as line 2")]
    assert v.resolve_suspects(iter(raw)) == ([], [])


def test_a_mere_hash_collision_is_loaded_after_all(monkeypatch):
    # given two different codes whose 60-bit hashes collide (forced)
    a, b = good("GCHASH1"), good("GCHASH2")
    monkeypatch.setattr(reader, "_MASK", 0)  # every code hashes to 0
    raw = [(2, a, None, None, None), (3, b, None, None, None)]
    v, out = check_all(raw)
    assert type(out[0]) is tuple and out[1] is None
    # when resolved; then the second is loaded, not reported as a duplicate
    load, dupes = v.resolve_suspects(iter(raw))
    assert [r[1] for r in load] == [b] and dupes == []


def test_format_and_batch_id_come_from_the_file(tmp_path):
    # given two files with the same content and another one
    one, two, other = tmp_path / "a.csv", tmp_path / "b.CSV", tmp_path / "c.jsonl"
    one.write_text("code\nABCDEF1\n")
    two.write_text("code\nABCDEF1\n")
    other.write_text('{"code":"ABCDEF1"}\n')
    # then the batch id follows the content, not the name, and the format the suffix
    d1, n1 = reader.fingerprint(one)
    assert reader.batch_id_for(d1) == reader.batch_id_for(reader.fingerprint(two)[0]) and n1 == 2
    assert reader.batch_id_for(reader.fingerprint(other)[0]) != reader.batch_id_for(d1)
    assert reader.detect_format(one) == "csv" and reader.detect_format(other) == "jsonl"
    assert reader.detect_format(tmp_path / "x.dat", "jsonl") == "jsonl"
    for bad in ((tmp_path / "x.dat", None), (one, "xml")):
        with pytest.raises(reader.FileError):
            reader.detect_format(*bad)


def test_a_file_that_is_not_utf8_is_refused(tmp_path):
    path = tmp_path / "latin1.csv"
    path.write_bytes("code\nCAFÉ0001\n".encode("latin-1"))
    with pytest.raises(reader.FileError, match="not UTF-8"):
        list(reader.read_rows(path, "csv"))


def test_report_merges_late_rejections_in_line_order_and_counts_reasons(tmp_path):
    # given rejections in line order, and two found late (by the second pass)
    report = Report(file="f.csv")
    report.counts["rows"] = 5
    for line, reason in ((2, "INVALID_CODE"), (5, "EXPIRED"), (9, "EXPIRED")):
        report.reject(line, "X", reason, "m")
    report.reject(7, "Y", "DUPLICATE_IN_FILE", "the same code as line 3", late=True)
    report.reject(3, "Z", "DUPLICATE_IN_FILE", "the same code as line 1", late=True)
    # when written (twice: the spill is read again)
    path = tmp_path / "r.json"
    for _ in range(2):
        report.write(path, report.summary(complete=True, exit_code=1))
    doc = json.loads(path.read_text())
    # then the rows are in line order, and counted by reason
    assert [r["line"] for r in doc["rejected"]] == [2, 3, 5, 7, 9]
    assert doc["rejectedByReason"] == {"DUPLICATE_IN_FILE": 2, "EXPIRED": 2, "INVALID_CODE": 1}
    assert doc["counts"]["rejected"] == 5 and doc["exitCode"] == 1 and doc["peakRssMb"] > 0
    report.write(None, {})  # no report path: nothing to write
    report.close()


@pytest.mark.parametrize("kind, cvc, reason", [
    ("PHYSICAL", "482913", None), ("PHYSICAL", None, "INVALID_CVC"), ("PHYSICAL", "48291", "INVALID_CVC"),
    ("PHYSICAL", "4829l3", "INVALID_CVC"), ("ELECTRONIC", "482913", "INVALID_CVC"), ("ELECTRONIC", None, None),
])
def test_a_physical_card_needs_its_printed_cvc_and_an_electronic_one_none(kind, cvc, reason):
    v = reader.Validator(check_digit=True, now=NOW, kind=kind, cvc_length=6)
    out = v.check((2, good("GCPP01"), "1500.00", None, None, cvc))
    if reason is None:
        assert out == (2, good("GCPP01"), ("1500.00", None, cvc))
    else:
        assert out.reason == reason and out.line == 2


def test_csv_and_jsonl_carry_the_cvc_column():
    csv_rows = list(reader.read_csv(io.StringIO(f"code,nominal,cvc\n{good('GCPP02')},10.00,123456\n")))
    jsonl_rows = list(reader.read_jsonl(io.StringIO(json.dumps({"code": good("GCPP03"), "cvc": "654321"}))))
    assert csv_rows[0][5] == "123456" and jsonl_rows[0][5] == "654321"

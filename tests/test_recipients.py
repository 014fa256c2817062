"""The recipient-file rules, one small file per case, on the pure validator (no stack)."""

import subprocess
import sys
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from activities.recipients.rows import (
    Recipient,
    RecipientRules,
    Rejected,
    SourceInvalid,
    Tally,
    build_recipients,
    cell_text,
    header_issue,
    read_rows,
    strict_failure,
    template_parts,
)
from activities.recipients.segments import (
    GSM7,
    GSM7_BASIC,
    GSM7_EXTENSION,
    UCS2,
    classify,
    classify_all,
)

A, B, C = "+12015550123", "+12015550124", "+12015550125"

Outcome = tuple[Any, ...]


@dataclass(frozen=True)
class Case:
    id: str
    file: bytes
    # Per row (and the header's row 0): (row, "ok" | skip code, number, body) for a
    # recipient, (row, code, value) for a rejected row. Or, for a file that fails as a
    # whole: (code, a fragment of its reason).
    expected: list[Outcome] | tuple[str, str]
    rules: dict[str, Any] = field(default_factory=dict)


def validate(content: bytes, **overrides: Any) -> list[Outcome]:
    rules = RecipientRules(
        **{"max_rows": 100, "max_message_chars": 1600, "agent_message": "Hello", **overrides}
    )
    header, rows = read_rows(content)
    outcomes = list(build_recipients(header, rows, rules))
    issue = header_issue(header, rules.column_mapping)
    return [_summary(item) for item in ([issue] if issue else []) + outcomes]


def _summary(item: Recipient | Rejected) -> Outcome:
    if isinstance(item, Rejected):
        return (item.row_number, item.code, item.value)
    return (item.row_number, item.skip_code or "ok", item.to_number, item.body)


CASES = [
    # The header and phone_number.
    Case(
        "no phone_number column",
        b"phone,name\n12015550123,Ann\n",
        ("source_invalid", "no column named phone_number (found 'phone', 'name')"),
    ),
    Case(
        "the column name must be exact",
        b"Phone_Number\n12015550123\n",
        ("source_invalid", "phone_number"),
    ),
    Case("spaces around header names", b" phone_number \n12015550123\n", [(1, "ok", A, "Hello")]),
    Case("empty header", b"\n\n", ("source_invalid", "no columns")),
    # Numbers.
    Case("a + is added", b"phone_number\n12015550123\n", [(1, "ok", A, "Hello")]),
    Case(
        "formatted numbers are normalised",
        b'phone_number\n"+1 (201) 555-0124"\n',
        [(1, "ok", B, "Hello")],
    ),
    Case(
        "blank numbers are reported as given",
        b"phone_number,name\n,Ann\n   ,Bob\n",
        [(1, "blank_number", ""), (2, "blank_number", "   ")],
    ),
    Case(
        "invalid numbers are reported as given",
        b"phone_number\nnot a number\n+1201555012\n 12015550123 \n",
        [
            (1, "invalid_number", "not a number"),
            (2, "invalid_number", "+1201555012"),
            (3, "ok", A, "Hello"),
        ],
    ),
    # Columns and request_data.
    Case(
        "request_data.<field> columns are variables",
        b"phone_number,request_data.name\n12015550123,Ann\n",
        [(1, "ok", A, "Hi Ann")],
        {"agent_message": "Hi {{name}}"},
    ),
    Case(
        "column_mapping feeds request_data",
        b"phone_number,First\n12015550123,Ann\n",
        [(1, "ok", A, "Hi Ann")],
        {"agent_message": "Hi {{name}}", "column_mapping": {"First": "request_data.name"}},
    ),
    Case(
        "a mapped column is known by its field name only",
        b"phone_number,First\n12015550123,Ann\n",
        [(1, "missing_variable", A[1:])],
        {"agent_message": "Hi {{First}}", "column_mapping": {"First": "request_data.name"}},
    ),
    Case(
        "row values override global.request_data; blank cells fall back to it",
        b"phone_number,name\n12015550123,Ann\n12015550124,\n12015550125,  \n",
        [(1, "ok", A, "Hi Ann"), (2, "ok", B, "Hi friend"), (3, "ok", C, "Hi friend")],
        {"agent_message": "Hi {{name}}", "request_data": {"name": "friend"}},
    ),
    Case(
        "request_data.<field> wins over a plain column of the same name",
        b"phone_number,name,request_data.name\n12015550123,plain,explicit\n12015550124,plain,\n",
        [(1, "ok", A, "Hi explicit"), (2, "ok", B, "Hi plain")],
        {"agent_message": "Hi {{name}}"},
    ),
    Case(
        "global.request_data values need not be strings",
        b"phone_number\n12015550123\n",
        [(1, "ok", A, "Code 42, vip true")],
        {"agent_message": "Code {{code}}, vip {{vip}}", "request_data": {"code": 42, "vip": True}},
    ),
    Case(
        "column names with spaces are reported and are no variables",
        b"phone_number,first name,request_data.last name\n12015550123,Ann,Lee\n",
        [
            (0, "invalid_column_name", "first name, request_data.last name"),
            (1, "missing_variable", A[1:]),
        ],
        {"agent_message": "Hi {{first name}}"},
    ),
    Case(
        "a column name with spaces that column_mapping maps gives its variable, unreported",
        b"phone_number,First Name,Last Name\n12015550123,Ann,Lee\n",
        [(0, "invalid_column_name", "Last Name"), (1, "ok", A, "Hi Ann")],
        {
            "agent_message": "Hi {{first_name}}",
            "column_mapping": {"First Name": "request_data.first_name"},
        },
    ),
    Case(
        "column names with spaces are harmless when no template needs them",
        b"phone_number,first name\n12015550123,Ann\n",
        [(0, "invalid_column_name", "first name"), (1, "ok", A, "Hello")],
    ),
    # JSON.
    Case(
        "a JSON array of objects is read like a CSV",
        b'\xef\xbb\xbf [{"phone_number": "12015550123", "name": "Ann"},'
        b' {"phone_number": 12015550124, "name": "Bob"}, {"name": "Cy"}]',
        [(1, "ok", A, "Hi Ann"), (2, "ok", B, "Hi Bob"), (3, "blank_number", "")],
        {"agent_message": "Hi {{name}}"},
    ),
    Case(
        "JSON request_data.<field> keys and non-string values",
        b'[{"phone_number": "+12015550123", "request_data.n": 7, "flag": null}]',
        [(1, "ok", A, "n=7")],
        {"agent_message": "n={{n}}"},
    ),
    Case(
        "JSON keys with spaces are reported",
        b'[{"phone_number": "+12015550123", "first name": "Ann"}]',
        [(0, "invalid_column_name", "first name"), (1, "ok", A, "Hello")],
    ),
    Case(
        "a JSON object is not a file",
        b'{"phone_number": "+12015550123"}',
        ("invalid_format", "array of objects"),
    ),
    Case("a JSON array of strings", b'["+12015550123"]', ("invalid_format", "array of objects")),
    Case(
        "malformed JSON",
        b'[{"phone_number": "+12015550123",]',
        ("invalid_format", "not valid JSON"),
    ),
    Case(
        "JSON lines are not a JSON array",
        b'{"phone_number": "+12015550123"}\n{"phone_number": "+12015550124"}\n',
        ("invalid_format", "not valid JSON"),
    ),
    Case(
        "JSON nested deeper than the parser goes",
        b'[{"phone_number": "+12015550123", "a": ' + b"[" * 100_000 + b"]" * 100_000 + b"}]",
        ("invalid_format", "nests arrays and objects too deep"),
    ),
    Case(
        "a JSON integer too long to read",
        b'[{"phone_number": "+12015550123", "a": ' + b"7" * 5_000 + b"}]",
        ("invalid_format", "an integer of more than 4300 digits"),
    ),
    Case(
        "JSON escapes PostgreSQL cannot store are U+FFFD, in keys and values",
        b'[{"phone_number": "+12015550123", "na\\u0000me": "A\\u0000n\\ud800"}]',
        [(1, "ok", A, "Hi A\ufffdn\ufffd")],
        {"agent_message": "Hi {{na\ufffdme}}"},
    ),
    # Templates.
    Case(
        "spaces inside the braces",
        b"phone_number,name\n12015550123,Ann\n",
        [(1, "ok", A, "Hi Ann!")],
        {"agent_message": "Hi {{   name }}!"},
    ),
    Case(
        "a variable without a value rejects the row",
        b"phone_number,name\n12015550123,\n12015550124,Bob\n",
        [(1, "missing_variable", A[1:]), (2, "ok", B, "Hi Bob")],
        {"agent_message": "Hi {{name}}"},
    ),
    Case(
        "a default in global.request_data saves the row",
        b"phone_number\n12015550123\n",
        [(1, "ok", A, "Hi there")],
        {"agent_message": "Hi {{name}}", "request_data": {"name": "there"}},
    ),
    Case(
        "no code is evaluated",
        b"phone_number,name\n12015550123,{{secret}}\n",
        [(1, "missing_variable", A[1:])],
        {"agent_message": "{{ __import__('os').getcwd() }} {{name}}"},
    ),
    Case(
        "a value that looks like a variable is not expanded",
        b"phone_number,name\n12015550123,{{secret}}\n",
        [(1, "ok", A, "Hi {{secret}}")],
        {"agent_message": "Hi {{name}}", "request_data": {"secret": "s3cr3t"}},
    ),
    Case(
        "an agent_message column overrides the template for its row",
        b"phone_number,agent_message,name\n12015550123,Yo {{name}},Ann\n12015550124,,Bob\n",
        [(1, "ok", A, "Yo Ann"), (2, "ok", B, "Hi Bob")],
        {"agent_message": "Hi {{name}}"},
    ),
    Case(
        "no template at all",
        b"phone_number,agent_message\n12015550123,\n12015550124,Hey\n",
        [(1, "missing_message", A[1:]), (2, "ok", B, "Hey")],
        {"agent_message": None},
    ),
    # Duplicates and opt-outs.
    Case(
        "duplicates are skipped, whatever their form",
        b"phone_number\n+12015550123\n12015550123\n+1 201 555 0123\n",
        [(1, "ok", A, "Hello"), (2, "duplicate", A, "Hello"), (3, "duplicate", A, "Hello")],
    ),
    Case(
        "duplicates are kept when not excluded",
        b"phone_number\n+12015550123\n12015550123\n",
        [(1, "ok", A, "Hello"), (2, "ok", A, "Hello")],
        {"exclude_duplicates": False},
    ),
    Case(
        "a rejected row does not make the next one a duplicate",
        b"phone_number,name\n12015550123,\n12015550123,Ann\n12015550123,Ann\n",
        [(1, "missing_variable", A[1:]), (2, "ok", A, "Hi Ann"), (3, "duplicate", A, "Hi Ann")],
        {"agent_message": "Hi {{name}}"},
    ),
    Case(
        "opted-out numbers are skipped",
        b"phone_number\n12015550123\n12015550124\n12015550123\n",
        [(1, "opted_out", A, "Hello"), (2, "ok", B, "Hello"), (3, "duplicate", A, "Hello")],
        {"opted_out": {A}},
    ),
    # Encodings and CSV forms.
    Case(
        "UTF-8 with a BOM",
        b"\xef\xbb\xbfphone_number,name\n12015550123,Zo\xc3\xab\n",
        [(1, "ok", A, "Hi Zo\u00eb")],
        {"agent_message": "Hi {{name}}"},
    ),
    Case(
        "CRLF line ends",
        b"phone_number,name\r\n12015550123,Ann\r\n12015550124,Bob\r\n",
        [(1, "ok", A, "Hi Ann"), (2, "ok", B, "Hi Bob")],
        {"agent_message": "Hi {{name}}"},
    ),
    Case(
        "quoted fields with commas, quotes and line breaks; rows count records, not lines",
        b'phone_number,name\r\n12015550123,"Lee, ""Ann""\r\nof Leeds"\r\n12015550124,Bob\r\n',
        [(1, "ok", A, 'Hi Lee, "Ann"\r\nof Leeds'), (2, "ok", B, "Hi Bob")],
        {"agent_message": "Hi {{name}}"},
    ),
    Case(
        "blank lines are no rows but keep the numbering",
        b"phone_number,name\n12015550123,Ann\n\n,\n12015550124,Bob\n\n\r\n\n",
        [(1, "ok", A, "Hello"), (4, "ok", B, "Hello")],
    ),
    Case(
        "short and long rows",
        b"phone_number,name\n12015550123\n12015550124,Bob,extra\n",
        [(1, "missing_variable", A[1:]), (2, "ok", B, "Hi Bob")],
        {"agent_message": "Hi {{name}}"},
    ),
    Case(
        "Latin-1 is not UTF-8",
        b"phone_number,name\n12015550123,Zo\xeb\n",
        ("invalid_encoding", "byte 0xEB at offset 32 (line 2)"),
    ),
    Case(
        "a stray byte far into the file",
        b"phone_number\n" + b"\n" * 1_200_000 + b"\xff\n",
        ("invalid_encoding", "offset 1200013 (line 1200002)"),
    ),
    Case(
        "a stray byte after a character split across decoding blocks",
        b"phone_number\n" + b"\n" * (2**20 - 14) + "\u00e9".encode() + b"\xff\n",
        ("invalid_encoding", f"byte 0xFF at offset {2**20 + 1} (line {2**20 - 12})"),
    ),
    Case(
        "UTF-16 is refused",
        "phone_number\n12015550123\n".encode("utf-16"),
        ("invalid_encoding", "UTF-16"),
    ),
    Case(
        "a spreadsheet is not CSV",
        b"PK\x03\x04\x14\x00\x06\x00\x08\x00\x00\x00!\x00[Content_Types].xml",
        ("invalid_format", "binary"),
    ),
    Case(
        "an unterminated quote",
        b'phone_number,name\n12015550123,"Ann\n12015550124,Bob\n',
        ("invalid_format", "unexpected end of data"),
    ),
    Case(
        "text after a closing quote",
        b'phone_number,name\n12015550123,"Ann"x\n',
        ("invalid_format", "line 2"),
    ),
    # Limits.
    Case(
        "more rows than allowed",
        b"phone_number\n12015550123\n12015550124\n12015550125\n",
        ("too_many_rows", "more than 2 rows"),
        {"max_rows": 2},
    ),
    Case(
        "as many rows as allowed; blank lines do not count",
        b"phone_number\n12015550123\n\n\n12015550124\n\n",
        [(1, "ok", A, "Hello"), (4, "ok", B, "Hello")],
        {"max_rows": 2},
    ),
    Case(
        "messages over the length limit",
        b"phone_number,name\n12015550123,Ann\n12015550124,Annabel\n",
        [(1, "ok", A, "Hello, Ann"), (2, "message_too_long", B[1:])],
        {"agent_message": "Hello, {{name}}", "max_message_chars": 10},
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_recipient_file_rule(case: Case) -> None:
    if isinstance(case.expected, tuple):
        code, fragment = case.expected
        with pytest.raises(SourceInvalid) as failure:
            validate(case.file, **case.rules)
        assert failure.value.code == code
        assert fragment in failure.value.reason
    else:
        assert validate(case.file, **case.rules) == case.expected


def test_a_json_cell_too_deep_to_write_as_text_is_the_files_error() -> None:
    # Deep enough that json.dumps runs out of stack, as a cell parsed near the limit can.
    value: list[Any] = []
    for _ in range(5_000):
        value = [value]

    with pytest.raises(SourceInvalid) as failure:
        cell_text(value)

    assert failure.value.code == "invalid_format"
    assert "nests arrays and objects too deep" in failure.value.reason


def test_rejected_rows_say_why() -> None:
    header, rows = read_rows(
        b"phone_number,name,agent_message\n"
        b"12015550123,,\n12015550124,Annabel,\n12015550125,Ann,{{ os.system('x') }}\n"
        b"x,,\n ,Bo,\n"
    )
    rules = RecipientRules(max_rows=10, max_message_chars=8, agent_message="Hi {{ name }}")

    reasons = [
        item.reason if isinstance(item, Rejected) else None
        for item in build_recipients(header, rows, rules)
    ]

    assert reasons == [
        "no value for {{name}} in this row and no default in global.request_data",
        "the message has 10 characters; at most 8",
        "no value for {{os.system('x')}} in this row and no default in global.request_data",
        "not a valid phone number in E.164 form",
        "phone_number is blank",
    ]


@pytest.mark.parametrize(
    ("body", "encoding", "segments"),
    [
        ("a" * 160, GSM7, 1),
        ("a" * 161, GSM7, 2),
        ("a" * 306, GSM7, 2),
        ("a" * 307, GSM7, 3),
        ("Ça coûte 5 €", UCS2, 1),  # û is not GSM-7
        ("Prix: 5 € [promo]", GSM7, 1),
        ("€" * 80, GSM7, 1),  # extension characters take two septets
        ("€" * 81, GSM7, 2),
        ("a" * 152 + "€" + "a" * 152, GSM7, 3),  # the escape pair is not split
        ("ÄÖÑÜäöñüàèéùìòÇØøÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ¡¿§¤£¥@", GSM7, 1),
        ("é" * 160, GSM7, 1),
        ("ç", UCS2, 1),  # only the capital Ç is in the GSM-7 alphabet
        ("ж" * 70, UCS2, 1),
        ("ж" * 71, UCS2, 2),
        ("ж" * 134, UCS2, 2),
        ("ж" * 135, UCS2, 3),
        ("😀" * 35, UCS2, 1),  # each emoji is a surrogate pair: two UTF-16 units
        ("😀" * 36, UCS2, 2),
        ("a" * 66 + "😀" + "a" * 66, UCS2, 3),  # the surrogate pair is not split
    ],
)
def test_segments(body: str, encoding: str, segments: int) -> None:
    assert classify(body) == (encoding, segments)
    assert classify_all([body, "a"]) == [(encoding, segments), (GSM7, 1)]


BODY = st.text(
    alphabet=st.sampled_from(GSM7_BASIC + GSM7_EXTENSION + "çж😀") | st.characters(),
    max_size=180,
)


@given(bodies=st.lists(BODY | st.builds(str.__mul__, BODY, st.integers(1, 20)), max_size=5))
@example(bodies=["ж" * 70, "ж" * 71, "a€", "ç" + "a" * 69, "a" * 160, "a" * 161, "€" * 80])
@example(bodies=["😀" * 35, "ç" + "€" * 69, "\n" * 71 + "ç"])
def test_classifying_many_bodies_classifies_each(bodies: list[str]) -> None:
    bodies = [body for body in bodies if not any(0xD800 <= ord(char) < 0xE000 for char in body)]
    assert classify_all(bodies) == [classify(body) for body in bodies]


def test_the_tally_counts_segments_of_messages_to_be_sent_only() -> None:
    tally = Tally()
    items: list[Recipient | Rejected] = [
        Recipient(1, A, "a" * 161, GSM7, 2),
        Recipient(2, B, "ж", UCS2, 1),
        Recipient(3, A, "a" * 161, GSM7, 2, "duplicate"),
        Rejected(4, "invalid_number", "not a valid phone number", "x"),
    ]
    for item in items:
        tally.count(item)

    assert (tally.rows, tally.recipients, tally.rejected, tally.skipped) == (4, 3, 1, 1)
    assert (tally.segments, tally.gsm7, tally.ucs2) == (3, 1, 1)


def test_a_strict_failure_names_the_first_rows_in_error() -> None:
    tally = Tally()
    for row in range(1, 9):
        tally.count(Rejected(row, "invalid_number", "not a valid phone number", f"bad{row}"))
    issue = header_issue(["phone_number", "first name"], {})

    reason = strict_failure(issue, tally)

    assert strict_failure(None, Tally()) is None
    assert reason == (
        "strict mode: 8 rows rejected, nothing sent; first: header invalid_column_name"
        " ('first name'); row 1 invalid_number ('bad1'); row 2 invalid_number ('bad2');"
        " row 3 invalid_number ('bad3'); row 4 invalid_number ('bad4')"
    )


@pytest.mark.parametrize(
    ("template", "parts"),
    [
        ("Hi {{ name }}!", ("Hi ", "name", "!")),
        ("{{a}}{{ b }}", ("", "a", "", "b", "")),
        ("{{a b}}", ("", "a b", "")),
        ("{{ a\n}}", ("", "a", "")),
        ("{{ {{x}} }}", ("{{ ", "x", " }}")),
        ("{{{x}}}", ("{", "x", "}")),
        ("{{x}", ("{{x}",)),
        ("}}{{y}}{{", ("}}", "y", "{{")),
        # Blank between the braces: a variable of one blank character, never filled.
        ("{{   }}", ("", " ", "")),
        ("{{\t }}x", ("", " ", "x")),
    ],
)
def test_template_parts_are_literals_and_variable_names(
    template: str, parts: tuple[str, ...]
) -> None:
    assert template_parts(template) == parts


def test_an_unclosed_variable_of_many_blanks_is_read_at_once() -> None:
    # Any key's template reaches this parser in the API process: the pattern it had took
    # cubic time on blanks after `{{` (4.5 s for 2,000, hours for 20,000), holding every
    # request of the process meanwhile. In a process of its own, so a hang ends the test.
    script = "from activities.recipients.rows import template_parts as t; t('{{' + ' ' * 20000)"
    done = subprocess.run([sys.executable, "-c", script], timeout=60, check=False)
    assert done.returncode == 0

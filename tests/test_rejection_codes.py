"""The table of validation codes is the only place codes are spelled, and docs/API.md lists it."""

import ast
import string
from pathlib import Path

from activities.recipients import columns, phone_columns, rows
from activities.recipients.columns import plain_csv
from activities.recipients.frames import pl
from activities.recipients.rejections import SKIP_CODES, TEXTS, Code, Rejected
from activities.recipients.rows import (
    Recipient,
    RecipientRules,
    build_recipients,
    header_issue,
    read_rows,
)

ROOT = Path(__file__).resolve().parent.parent
# The modules that give codes: both engines and the activity around them.
ENGINES = [rows, columns, phone_columns, ROOT / "activities" / "validation.py"]


def _source(module: object) -> tuple[str, str]:
    path = module if isinstance(module, Path) else Path(str(getattr(module, "__file__", "")))
    return path.name, path.read_text(encoding="utf-8")


def _documented() -> list[tuple[str, str, str]]:
    """(code, text, limit) of each row of docs/API.md's table of validation codes."""
    doc = (ROOT / "docs" / "API.md").read_text(encoding="utf-8")
    section = doc.split("### Validation codes", 1)[1].split("\n## ", 1)[0]
    found = []
    for line in section.splitlines():
        if line.startswith("| `"):
            code, _, text, limit = (cell.strip().strip("`") for cell in line.strip("|").split("|"))
            found.append((code, text, limit))
    return found


def _shown(template: str) -> str:
    """A text as the docs show it: each field as `<name>`."""
    return "".join(
        literal.replace("{", "{{").replace("}", "}}") + (f"<{field}>" if field is not None else "")
        for literal, field, _, _ in string.Formatter().parse(template)
    ).format()


def test_no_engine_spells_a_code_of_its_own() -> None:
    codes = {code.value for code in Code}
    for module in ENGINES:
        name, source = _source(module)
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                assert node.value not in codes, f"{name}:{node.lineno} spells {node.value!r}"
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
                made = node.func.id in {"Rejected", "SourceInvalid"}
                assert not made, f"{name}:{node.lineno} makes a {node.func.id} outside the table"


def test_docs_list_every_code_and_text_of_the_table() -> None:
    documented = _documented()
    assert {code for code, _, _ in documented} == {code.value for code in Code}
    texts = [(code, text, limit) for code, text, limit in documented if text]
    assert texts == [(text.code.value, _shown(text.template), text.limit or "") for text in TEXTS]
    assert [code for code, text, _ in documented if not text] == [code.value for code in SKIP_CODES]


def test_recipients_doc_names_every_code() -> None:
    doc = (ROOT / "docs" / "RECIPIENTS.md").read_text(encoding="utf-8")
    section = doc.split("## Codes", 1)[1].split("\n## ", 1)[0]
    assert [code for code in Code if f"`{code.value}`" not in section] == []


def test_both_engines_give_only_codes_of_the_table() -> None:
    content = (
        b"phone_number,name,agent_message,has space\n"
        b"+12015550123,Ann,,\n"
        b"+12015550123,Ann,,\n"
        b",Bob,,\n"
        b"555-not-a-number,Cy,,\n"
        b"+12015550124,,,\n"
        b"+12015550125,Di,Hello there friend,\n"
        b"+12015550127,Fi,,\n"
    )
    rules = RecipientRules(
        max_rows=10, max_message_chars=10, agent_message="Hi {{name}}", opted_out={"+12015550127"}
    )
    header, file_rows = read_rows(content)
    by_rows = list(build_recipients(header, file_rows, rules))
    row_codes = {item.code for item in by_rows if isinstance(item, Rejected)} | {
        item.skip_code for item in by_rows if isinstance(item, Recipient) and item.skip_code
    }
    plain = plain_csv(content, rules)
    assert plain is not None
    blocks = list(plain.blocks())
    column_codes = {row.code for block in blocks for row in block.rejected} | set(
        pl.concat([block.ledger["skip_code"] for block in blocks]).drop_nulls()
    )
    assert (
        row_codes
        == column_codes
        == {
            Code.DUPLICATE,
            Code.OPTED_OUT,
            Code.BLANK_NUMBER,
            Code.INVALID_NUMBER,
            Code.MISSING_VARIABLE,
            Code.MESSAGE_TOO_LONG,
        }
    )
    assert row_codes <= set(Code)
    issue = header_issue(header, {})
    assert issue is not None
    assert issue.code in set(Code)

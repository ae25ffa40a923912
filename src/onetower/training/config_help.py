"""``--help`` for recipes: :func:`describe_config` lists every key of a config schema with its
type, its default, the value the recipe's YAML sets and its meaning, read from the schema's
``#:`` comments (Sphinx autodoc's convention: a ``#:`` block above a field, or a ``#:``
comment trailing it).
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import io
import json
import os
import re
import shutil
import sys
import textwrap
import tokenize
import typing
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, ListConfig, OmegaConf

from onetower.training.config import ConfigError

_UNSET: Any = object()
_OPEN_NOTE = "open section: the schema does not fix its keys; the code that reads them checks them"


def field_comments(cls: type) -> dict[str, str]:
    """The meaning of each field of dataclass ``cls`` (and of its dataclass bases), by name.

    A meaning is the block of ``#:`` comment lines directly above a field (a blank line or a
    plain ``#`` comment ends a block) followed by any ``#:`` comment within the field's
    statement: trailing it on the same line, or inside the parentheses of a wrapped default.
    This is Sphinx autodoc's convention. The class source is read with :mod:`tokenize`, so a
    ``#`` inside a string is never taken for a comment. Lines of a block are joined with spaces;
    an empty ``#:`` line starts a new paragraph (``"\\n"``). A field with no such comment falls
    back to ``field(metadata={"help": ...})``; fields without either are left out, as are all
    fields of a class whose source cannot be read (one built at run time).
    """
    out: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if dataclasses.is_dataclass(klass):
            out.update(_own_field_comments(klass))
    for f in dataclasses.fields(cls):
        if f.name not in out and f.metadata.get("help"):
            out[f.name] = str(f.metadata["help"])
    return out


def _doc_comment(comment: str) -> str | None:
    """The text of a ``#:`` comment token, or None for a plain comment."""
    return comment[2:].strip() if comment.startswith("#:") else None


def _join_comment(lines: list[str]) -> str:
    paragraphs: list[list[str]] = [[]]
    for line in lines:
        if line:
            paragraphs[-1].append(line)
        elif paragraphs[-1]:
            paragraphs.append([])
    return "\n".join(" ".join(p) for p in paragraphs if p)


@functools.cache
def _own_field_comments(cls: type) -> dict[str, str]:
    """``#:`` comments of the fields written in ``cls``'s own class body."""
    try:
        source = textwrap.dedent(inspect.getsource(cls))
    except (OSError, TypeError):
        return {}
    found: dict[str, str] = {}
    above: list[str] = []  # '#:' lines directly above the next statement
    stmt: list[tokenize.TokenInfo] = []  # the current logical line, comments aside
    within: list[str] = []  # '#:' comments inside the current statement
    depth = stmt_depth = 0
    try:
        for tok in tokenize.generate_tokens(io.StringIO(source).readline):
            if tok.type == tokenize.INDENT:
                depth += 1
            elif tok.type == tokenize.DEDENT:
                depth -= 1
            elif tok.type == tokenize.COMMENT:
                text = _doc_comment(tok.string)
                if stmt:
                    if text is not None:
                        within.append(text)
                elif text is None:
                    above = []
                else:
                    above.append(text)
            elif tok.type == tokenize.NL:
                if not stmt and not tok.line.strip():  # a blank line ends a block
                    above = []
            elif tok.type in (tokenize.NEWLINE, tokenize.ENDMARKER):
                # a field is `name: annotation [= default]` directly in the class body
                if stmt_depth == 1 and len(stmt) > 1 and stmt[0].type == tokenize.NAME:
                    if stmt[1].string == ":" and (text := _join_comment(above + within)):
                        found[stmt[0].string] = text
                stmt, within, above = [], [], []
            else:
                if not stmt:
                    stmt_depth = depth
                stmt.append(tok)
    except (tokenize.TokenError, SyntaxError):
        pass
    return found


def _type_name(tp: Any) -> str:
    """A field's type as written (string annotations) or as a short readable name."""
    if isinstance(tp, str):
        return tp
    if tp is type(None):
        return "None"
    if isinstance(tp, type) and not typing.get_args(tp):
        return tp.__name__
    # drop module paths: Optional[my.pkg.Section] -> Optional[Section]
    text = re.sub(r"ForwardRef\('([^']*)'\)", r"\1", str(tp).replace("typing.", ""))
    return re.sub(r"\b(?:[A-Za-z_]\w*\.)+([A-Za-z_]\w*)", r"\1", text)


def _fmt(value: Any, inner: bool = False) -> str:
    """A value as it would be written in YAML (flow style); ``inner``: inside a list or dict."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        try:  # quoted only where YAML would read the plain text as something else
            doc = f"[{value}]" if inner else value
            plain = value.strip() == value != "" and yaml.safe_load(doc) == (
                [value] if inner else value
            )
        except yaml.YAMLError:
            plain = False
        return value if plain else json.dumps(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_fmt(v, True) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_fmt(k, True)}: {_fmt(v, True)}" for k, v in value.items()) + "}"
    return str(value)


def _leaves(tree: Any, prefix: str) -> dict[str, Any]:
    """``{"a.b": v}`` for every leaf of a nested dict (an empty dict is a leaf)."""
    if not isinstance(tree, dict) or not tree:
        return {prefix.rstrip("."): tree}
    out: dict[str, Any] = {}
    for k, v in tree.items():
        out.update(_leaves(v, f"{prefix}{k}."))
    return out


@dataclasses.dataclass
class _Entry:
    key: str
    type: str = ""
    default: Any = _UNSET  # _UNSET: none (a key only the YAML sets, a section)
    yaml: Any = _UNSET
    meaning: str = ""
    section: bool = False
    note: str = ""


def _node_default(node: Any) -> Any:
    if node._is_missing():
        return "???"
    if node._is_none():
        return None
    if isinstance(node, (DictConfig, ListConfig)):
        return OmegaConf.to_container(node, resolve=False)
    return node._value()


def _class_summary(cls: type) -> str:
    doc = inspect.getdoc(cls) or ""
    if not doc or doc.startswith(cls.__name__ + "("):  # dataclass's generated signature
        return ""
    return " ".join(doc.split("\n\n")[0].split())


def _section_entries(
    cls: type, node: DictConfig, prefix: str, yflat: dict[str, Any], ancestors: tuple[type, ...]
) -> list[_Entry]:
    """Entries of a dataclass section: its leaves first, then each sub-section in turn."""
    comments = field_comments(cls)
    leaves: list[_Entry] = []
    sections: list[_Entry] = []
    for f in dataclasses.fields(cls):
        child = node._get_node(f.name)  # (`in` would skip a missing `???` value)
        if child is None:
            continue
        key = prefix + f.name
        entry = _Entry(key, _type_name(f.type), meaning=comments.get(f.name, ""))
        entry.yaml = yflat.pop(key, _UNSET)
        if not isinstance(child, DictConfig):
            entry.default = _node_default(child)
            leaves.append(entry)
            continue
        sub = child._metadata.object_type
        unset = child._is_none() or child._is_missing()
        if unset:
            sub = child._metadata.ref_type
        fixed = isinstance(sub, type) and dataclasses.is_dataclass(sub)
        if not fixed or (unset and sub in ancestors):  # a dict; or a null self-reference
            entry.note = "" if fixed else _OPEN_NOTE
            entry.section, entry.default = True, _node_default(child)
            sections.append(entry)
            sections.extend(_open_entries(child, key, yflat))
            continue
        entry.section = True
        entry.meaning = "\n".join(t for t in (entry.meaning, _class_summary(sub)) if t)
        if unset:
            entry.default = _node_default(child)
            entry.note = f"{_fmt(entry.default)} by default; these are its keys once it is set"
            child = OmegaConf.structured(sub)
        sections.append(entry)
        sections.extend(_section_entries(sub, child, key + ".", yflat, (*ancestors, sub)))
    return leaves + sections


def _open_entries(node: DictConfig, key: str, yflat: dict[str, Any]) -> list[_Entry]:
    """The keys an open (dict) section has by default, then those only the YAML sets."""
    element = getattr(node._metadata, "element_type", Any)
    element_name = "" if element is Any else _type_name(element)
    defaults = {} if node._is_none() or node._is_missing() else _node_default(node)
    entries = [
        _Entry(k, element_name if k.count(".") == key.count(".") + 1 else "", default=v)
        for k, v in (_leaves(defaults, key + ".") if defaults else {}).items()
    ]
    for k in [k for k in yflat if k.startswith(key + ".")]:
        match = next((e for e in entries if e.key == k), None)
        if match is None:
            depth1 = k.count(".") == key.count(".") + 1
            entries.append(match := _Entry(k, element_name if depth1 else ""))
        match.yaml = yflat.pop(k)
    return entries


def _value_text(entry: _Entry, source: str) -> tuple[str, str]:
    """``("= value", "(from NAME.yaml; schema default: ...)")``; either may be empty."""
    if entry.yaml is not _UNSET:
        mark = f"(from {source}"
        if entry.default is not _UNSET:
            mark += f"; schema default: {_fmt(entry.default)}"
        return f"= {_fmt(entry.yaml)}", mark + ")"
    if entry.default is _UNSET:
        return "", ""
    return f"= {_fmt(entry.default)}", "(required)" if entry.default == "???" else ""


def _wrap(text: str, width: int, indent: str) -> list[str]:
    lines: list[str] = []
    for paragraph in text.split("\n"):
        lines += textwrap.wrap(
            paragraph,
            width,
            initial_indent=indent,
            subsequent_indent=indent,
            break_long_words=False,
            break_on_hyphens=False,
        )
    return lines


def describe_config(
    schema: type,
    yaml_path: str | Path | None = None,
    *,
    prog: str | None = None,
    width: int | None = None,
) -> str:
    """The ``--help`` text of a recipe: usage, then every config key of ``schema``.

    Each key is listed with its dotted name, its type, its value and its meaning (the field's
    ``#:`` comment, see :func:`field_comments`). The value is the schema default or, when the
    YAML at ``yaml_path`` sets the key, the YAML's value marked ``(from NAME.yaml; schema
    default: ...)``. Nested dataclasses are ``[section]`` groups; dict-typed sections are open
    sections listed with their default keys and the keys the YAML puts in them. YAML keys that
    the schema lacks are named at the end. Works for any tree of dataclasses.

    Args:
        schema: the recipe's root dataclass (or an instance of it).
        yaml_path: the YAML the run would read (``--config``, else the recipe's default).
        prog: the program name in the usage line (default: as argparse, ``sys.argv[0]``'s name).
        width: wrap to this many columns (default: the terminal's, between 60 and 120).

    Raises:
        ConfigError: ``yaml_path`` is not a file, or not a YAML mapping.
    """
    cls = schema if isinstance(schema, type) else type(schema)
    prog = prog or os.path.basename(sys.argv[0]) or "recipe"
    width = width or min(max(shutil.get_terminal_size((100, 24)).columns, 60), 120)
    yflat: dict[str, Any] = {}
    source = ""
    if yaml_path is not None:
        path = Path(yaml_path)
        if not path.is_file():
            raise ConfigError(f"config file {str(path)!r} does not exist")
        try:
            tree = OmegaConf.to_container(OmegaConf.load(path), resolve=False)
        except Exception as e:  # noqa: BLE001 - any parse error is the file's
            raise ConfigError(f"{path}: {e}") from None
        if not isinstance(tree, dict):
            raise ConfigError(f"{path}: not a YAML mapping")
        yflat = _leaves(tree, "") if tree else {}
        source = path.name
    entries = _section_entries(cls, OmegaConf.structured(schema), "", yflat, (cls,))
    example = next(
        (e for e in entries if not e.section and isinstance(e.default, (int, float, str))),
        None,
    )
    fill = functools.partial(
        textwrap.fill, width=width, break_long_words=False, break_on_hyphens=False
    )
    out = [f"usage: {prog} [-h] [--config FILE] [key=value ...]", ""]
    out.append(
        fill(
            f"Builds the {cls.__name__} config: the schema's defaults, then the YAML file"
            f" (--config FILE, else {str(yaml_path) if yaml_path else 'none'}), then key=value"
            " overrides: dotted keys, values in YAML syntax"
            + (f" (e.g. {example.key}={_fmt(example.default)})." if example else ".")
        )
    )
    out += [
        "",
        "options:",
        "  -h, --help     list every config key (this text) and exit",
        f"  --config FILE  YAML config file (default: {source or 'none'})",
        "  key=value      set one config key; repeatable, applied in order",
        "",
        fill(
            "config keys: KEY  TYPE  = VALUE, then its meaning"
            + (f'; "(from {source})" marks a value that {source} sets' if source else "")
            + ". [section] heads a group of keys; open sections take keys the schema does not"
            " list."
        ),
    ]
    rows = [e for e in entries if not e.section]
    key_w = min(max((len(e.key) for e in rows), default=0), 36)
    type_w = min(max((len(e.type) for e in rows), default=0), 18)
    if entries and not entries[0].section:
        out.append("")  # the root's own keys, before its sections
    longest = max((len(_value_text(e, source)[1]) for e in rows), default=0)
    mark_column = max(6, min(key_w + type_w + 8, width - longest))  # marks on lines of their own
    for e in entries:
        value, mark = _value_text(e, source)
        if e.section:
            out += ["", "  ".join(t for t in (f"[{e.key}]", e.type, value, mark) if t)]
            out += _wrap(e.meaning, width, "      ") + _wrap(e.note, width, "      ")
            continue
        line = f"  {e.key:<{key_w}}  {e.type:<{type_w}}  {value}".rstrip()
        if mark and len(line) + 2 + len(mark) > width:  # the mark goes under the value
            out += [line, " " * mark_column + mark]
        else:
            out.append(f"{line}  {mark}" if mark else line)
        out += _wrap(e.meaning, width, "      ")
    if yflat:
        out += [
            "",
            fill(
                f"{source} also sets keys the schema lacks (loading it fails on them): "
                + ", ".join(yflat)
            ),
        ]
    return "\n".join(out)

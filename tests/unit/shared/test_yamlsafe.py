"""Bounded YAML parsing: values as PyYAML's safe loader gives them, limits on size, depth, aliases and expansion."""

from __future__ import annotations

import pytest
import yaml

from shared import yamlsafe
from shared.yamlsafe import YamlError, iter_yaml_documents, load_yaml_documents


@pytest.fixture(params=["c", "python"])
def loader(request, monkeypatch):
    """Runs a test with libyaml's loader (when built) and with PyYAML's pure Python one."""
    if request.param == "c" and not hasattr(yaml, "CSafeLoader"):
        pytest.skip("PyYAML was built without libyaml")
    monkeypatch.setattr(yamlsafe, "_Loader", yaml.CSafeLoader if request.param == "c" else yaml.SafeLoader)


def billion_laughs(levels: int = 9) -> str:
    lines = ['a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for level in range(1, levels):
        name, previous = chr(ord("a") + level), chr(ord("a") + level - 1)
        lines.append(f"{name}: &{name} [{', '.join([f'*{previous}'] * 10)}]")
    return "\n".join(lines) + "\n"


def test_multi_document_stream_gives_every_document(loader):
    text = "kind: Component\nmetadata: {name: a}\n---\nkind: API\ntags: [x, y]\n---\n- 1\n- two\n"
    assert load_yaml_documents(text) == [
        {"kind": "Component", "metadata": {"name": "a"}},
        {"kind": "API", "tags": ["x", "y"]},
        [1, "two"],
    ]


def test_values_are_those_of_the_safe_loader(loader):
    text = "a: &x {n: 1, f: 1.5, t: true, s: '1', nothing: null}\nb: *x\nc: !!str 12\nd: 2024-01-02\n"
    assert load_yaml_documents(text) == [yaml.safe_load(text)]


def test_empty_documents_are_skipped_but_keep_their_index(loader):
    text = "---\n---\na: 1\n---\n# only a comment\n---\nb: 2\n---\n"
    assert list(iter_yaml_documents(text)) == [(1, {"a": 1}), (3, {"b": 2})]
    assert load_yaml_documents("") == []


def test_bytes_are_accepted(loader):
    assert load_yaml_documents("name: caf\u00e9\n".encode()) == [{"name": "caf\u00e9"}]


def test_input_over_max_bytes_is_rejected():
    with pytest.raises(YamlError, match="larger than 10 bytes"):
        load_yaml_documents("a: 1234567890\n", max_bytes=10)
    # Bytes, not characters: five two-byte characters are ten bytes.
    assert load_yaml_documents("\u00e9" * 5, max_bytes=10) == ["\u00e9" * 5]
    with pytest.raises(YamlError, match="larger than 9 bytes"):
        load_yaml_documents("\u00e9" * 5, max_bytes=9)


def test_nesting_deeper_than_max_depth_is_rejected(loader):
    assert load_yaml_documents("[[[1]]]", max_depth=3) == [[[[1]]]]
    with pytest.raises(YamlError, match="nested deeper than 3 levels") as raised:
        load_yaml_documents("a:\n  b:\n    c:\n      d: 1\n", max_depth=3)
    assert (raised.value.line, raised.value.column) == (4, 7)


def test_deep_flow_nesting_is_rejected_quickly_instead_of_crashing(loader):
    """libyaml's own composer recurses in C and segfaults on ~100k levels; its scanner is quadratic in them, so
    reading on past the limit would not finish (no wall-clock bound here: the machine is shared)."""
    depth = 1_000_000
    with pytest.raises(YamlError, match="nested deeper than 64 levels"):
        load_yaml_documents("[" * depth + "]" * depth)


def test_billion_laughs_is_rejected_before_it_expands(loader):
    """Counted while composing: expanding it first would build a billion nodes."""
    with pytest.raises(YamlError, match="expands to more than 1000000 nodes"):
        load_yaml_documents(billion_laughs())


def test_expanded_size_counts_every_alias_use(loader):
    text = billion_laughs(levels=3)  # a: 11 nodes, b: 1 + 10 * 11, c: 1 + 10 * 111, plus the root and 3 keys
    assert len(load_yaml_documents(text, max_nodes=1 + 3 + 11 + 111 + 1111)[0]["c"]) == 10
    with pytest.raises(YamlError, match="expands to more than 1236 nodes"):
        load_yaml_documents(text, max_nodes=1 + 3 + 11 + 111 + 1111 - 1)


def test_too_many_aliases_are_rejected(loader):
    text = "a: &a 1\nb: [" + ", ".join(["*a"] * 5) + "]\n"
    assert load_yaml_documents(text, max_aliases=5)[0]["b"] == [1] * 5
    with pytest.raises(YamlError, match="more than 4 aliases"):
        load_yaml_documents(text, max_aliases=4)


def test_recursive_alias_is_rejected(loader):
    with pytest.raises(YamlError, match="alias 'a' refers to a collection that contains it"):
        load_yaml_documents("a: &a [1, *a]\n")


def test_syntax_error_says_where(loader):
    with pytest.raises(YamlError) as raised:
        load_yaml_documents("kind: Component\nmetadata:\n  name: [a, b\nspec: {}\n")
    error = raised.value
    assert (error.line, error.column) == (4, 5)
    # libyaml and PyYAML word the problem a little differently.
    assert str(error).startswith("while parsing a flow sequence: ") and "',' or ']'" in str(error)
    assert str(error).endswith(" at line 4, column 5")
    assert "\n" not in str(error)


def test_a_bad_second_document_does_not_hide_the_first_or_the_third(loader):
    text = "a: 1\n---\nb: !unknown-tag x\n---\nc: *undefined\n---\nd: 4\n"
    results = list(iter_yaml_documents(text))
    assert results[0] == (0, {"a": 1})
    assert results[1][0] == 1 and isinstance(results[1][1], YamlError)
    assert "could not determine a constructor for the tag '!unknown-tag' at line 3" in str(results[1][1])
    assert results[2][0] == 2 and "found undefined alias 'undefined' at line 5, column 4" in str(results[2][1])
    assert results[3] == (3, {"d": 4})


def test_a_syntax_error_ends_the_stream_after_the_documents_before_it(loader):
    results = list(iter_yaml_documents("a: 1\n---\nb: [1\n---\nc: 3\n"))
    assert results[0] == (0, {"a": 1})
    assert len(results) == 2 and results[1][0] == 1 and isinstance(results[1][1], YamlError)
    with pytest.raises(YamlError, match="line 4"):
        load_yaml_documents("a: 1\n---\nb: [1\n---\nc: 3\n")


def test_constructor_value_errors_become_yaml_errors(loader):
    with pytest.raises(YamlError, match=r"month must be in 1\.\.12"):
        load_yaml_documents("when: 2024-13-01\n")


CATALOG_FILE = """---
apiVersion: backstage.io/v1alpha1
kind: Component
metadata:
  name: checkout
  tags: [java, web]
  title: 'Check "out"'
  annotations: {a: one, b: two}
spec:
  type: service
  lifecycle: production
  owner: team-a
  dependsOn:
    - resource:default/db
  definition: |
    service S { rpc Call (Req) returns (Res); }
---
- 1
- yes
- 2024-01-02
- 1.5
- null
- {3: three, null: none}
- !!set {x, y}
- {dup: 1, other: 2, dup: 3}
"""


@pytest.mark.parametrize(
    "text",
    [
        "a: &x 1\nb: *x\n",  # anchors and aliases
        "[[1]]\n",  # nested flow collections
        "a: [b, 'c]', [d]]\n",  # a quote could hide a closer
        "a: {b: 1 # }\n  , c: [2]}\n",  # so could a comment
        "- " * 30 + "x\n",  # compact nesting on one line
        "a:\n" + "".join(" " * (2 * i) + f"k{i}:\n" for i in range(1, 20)) + " " * 40 + "v: 1\n",  # deep indentation
    ],
)
def test_text_that_could_break_a_limit_takes_the_bounded_composer(text):
    assert not yamlsafe._within_limits(text, yamlsafe._Budget(max_depth=64, max_aliases=100, max_nodes=10**6))


def test_plain_text_takes_libyamls_composer_and_gives_the_same_values(loader):
    budget = yamlsafe._Budget(max_depth=64, max_aliases=100, max_nodes=10**6)
    assert yamlsafe._within_limits(CATALOG_FILE, budget)
    fast = list(iter_yaml_documents(CATALOG_FILE))
    composed = list(yamlsafe._composed_documents(CATALOG_FILE, budget))
    assert fast == composed == list(enumerate(yaml.safe_load_all(CATALOG_FILE)))
    assert [list(value) for _, value in fast if isinstance(value, dict)] == [
        ["apiVersion", "kind", "metadata", "spec"]  # keys in document order
    ]
    assert fast[1][1][-1] == {"dup": 3, "other": 2}  # a repeated key keeps its first place and its last value


def test_plain_text_with_a_bad_document_is_reported_document_by_document(loader):
    results = list(iter_yaml_documents("a: 1\n---\nb: !unknown-tag x\n---\nd: 4\n"))
    assert results[0] == (0, {"a": 1}) and results[2] == (2, {"d": 4})
    assert results[1][0] == 1 and "could not determine a constructor for the tag '!unknown-tag'" in str(results[1][1])


def test_compact_nesting_past_the_depth_limit_is_still_rejected(loader):
    with pytest.raises(YamlError, match="nested deeper than 64 levels"):
        load_yaml_documents("- " * 100 + "x\n")

"""The symbolic check a ``.pth`` pickle passes before anything is built: its opcodes run on
placeholders (nothing is constructed, no callable is resolved), so that only a state dict's
opcodes, string keys, a bounded number of objects and depth, and no self-references get
through to the unpickler (:mod:`resnext_jax.weights.torch_pth`)."""

from __future__ import annotations

import io
import pickletools
from typing import Any

from resnext_jax.weights.errors import WeightsFileError

# Bounds of what one pickle may build, checked before anything is built. A full-size state
# dict is a few tens of thousands of objects, 6 levels deep.
MAX_OBJECTS = 5_000_000  # as a tree: a memo reference counts what it refers to again
MAX_DEPTH = 32
_SCALARS = {"BININT", "BININT1", "BININT2", "INT", "LONG", "LONG1", "LONG4", "BINFLOAT",
            "FLOAT", "NONE", "NEWTRUE", "NEWFALSE", "BINBYTES", "SHORT_BINBYTES", "BINBYTES8",
            "BINSTRING", "SHORT_BINSTRING", "STRING"}
_TEXT = {"BINUNICODE", "SHORT_BINUNICODE", "BINUNICODE8", "UNICODE"}
_IGNORED = {"PROTO", "FRAME", "STOP"}


class _Node:
    """One object the pickle would build, as a kind and its children (nothing is built)."""

    __slots__ = ("children", "kind")

    def __init__(self, kind: str, children: list | None = None) -> None:
        self.kind, self.children = kind, children or []


def check_pickle(data: bytes, start: int = 0) -> int:
    """Run the pickle's opcodes on a stack of placeholders, building nothing: every length it
    declares must fit in its bytes; only the opcodes of a state dict may occur; dict keys
    must be strings; BUILD may only set the attributes of an ``OrderedDict`` (its
    ``_metadata``); and the objects, counted as a tree (memo references again in full) and
    in depth, must stay within :data:`MAX_OBJECTS` and :data:`MAX_DEPTH`, with no object
    inside itself. ``start``: where the pickle starts in ``data`` (read in place, not
    copied). Returns where it ends."""
    stack: list[Any] = []
    memo: dict[int, _Node] = {}
    mark = object()
    end, result = start, None

    def pop_to_mark() -> list:
        if mark not in stack:
            raise WeightsFileError("a damaged pickle: no mark")
        i = len(stack) - 1 - stack[::-1].index(mark)
        items = stack[i + 1:]
        del stack[i:]
        return items

    def pop(n: int = 1) -> list:
        if len(stack) < n or any(x is mark for x in stack[-n:]):
            raise WeightsFileError("a damaged pickle: stack underflow")
        items = stack[-n:]
        del stack[-n:]
        return items

    stream = io.BytesIO(data)  # shares the bytes: no copy
    stream.seek(start)
    try:
        for op, arg, pos in pickletools.genops(stream):
            name, end = op.name, pos
            if name in _IGNORED:
                continue
            if name in _SCALARS:
                stack.append(_Node("scalar"))
            elif name in _TEXT:
                stack.append(_Node("str"))
            elif name in ("GLOBAL", "STACK_GLOBAL"):
                if name == "STACK_GLOBAL":
                    pop(2)
                    arg = "stack"
                stack.append(_Node(f"global {arg}"))
            elif name in ("EMPTY_DICT", "EMPTY_LIST", "EMPTY_TUPLE"):
                stack.append(_Node(name[6:].lower()))
            elif name == "MARK":
                stack.append(mark)
            elif name in ("TUPLE", "LIST", "DICT"):
                items = pop_to_mark()
                if name == "DICT":
                    _check_keys(items[0::2])
                stack.append(_Node(name.lower(), items))
            elif name in ("TUPLE1", "TUPLE2", "TUPLE3"):
                stack.append(_Node("tuple", pop(int(name[-1]))))
            elif name in ("BINPUT", "LONG_BINPUT", "PUT", "MEMOIZE"):
                if not stack or stack[-1] is mark:
                    raise WeightsFileError("a damaged pickle: nothing to memoize")
                index = len(memo) if name == "MEMOIZE" else arg
                if not 0 <= index < MAX_OBJECTS:  # the unpickler sizes its memo by the index
                    raise WeightsFileError(f"its pickle stores an object at memo index {index}; "
                                           f"a state dict needs fewer than {MAX_OBJECTS:,}")
                memo[index] = stack[-1]
            elif name in ("BINGET", "LONG_BINGET", "GET"):
                if arg not in memo:
                    raise WeightsFileError("a damaged pickle: a memo reference to nothing")
                stack.append(memo[arg])
            elif name in ("APPEND", "APPENDS", "SETITEM", "SETITEMS"):
                items = pop(1) if name == "APPEND" else pop(2) if name == "SETITEM" \
                    else pop_to_mark()
                (target,) = pop(1)
                if name.startswith("SET"):
                    if len(items) % 2:
                        raise WeightsFileError("a damaged pickle: a key without a value")
                    _check_keys(items[0::2])
                target.children.extend(items)
                stack.append(target)
            elif name in ("BINPERSID", "PERSID"):
                stack.append(_Node("persistent", pop(1) if name == "BINPERSID" else []))
            elif name == "REDUCE":
                function, args = pop(2)
                stack.append(_Node(f"reduce {function.kind}", [args]))
            elif name == "BUILD":
                (state,) = pop(1)
                if not stack or stack[-1] is mark \
                        or stack[-1].kind != "reduce global collections OrderedDict":
                    raise WeightsFileError("its pickle sets attributes (BUILD) on something "
                                           "other than a state dict")
                stack[-1].children.append(state)
            elif name == "POP":
                pop(1)
            elif name == "POP_MARK":
                pop_to_mark()
            else:
                raise WeightsFileError(f"its pickle uses the opcode {name}, which a state dict "
                                       "never needs")
            if len(stack) > MAX_OBJECTS:
                raise WeightsFileError("its pickle builds too many objects")
        result = stack[-1] if stack and stack[-1] is not mark else None
    except WeightsFileError:
        raise
    except (ValueError, EOFError) as err:
        raise WeightsFileError(f"a damaged pickle: {str(err)[:200]}") from None
    if result is not None:
        _check_tree(result)
    return end + 1


def _check_keys(keys: list) -> None:
    if any(k is not None and getattr(k, "kind", None) != "str" for k in keys):
        raise WeightsFileError("its pickle has a dict key that is not a string; a state dict's "
                               "keys are parameter names")


def _check_tree(root: _Node) -> None:
    """The pickle's result as a tree: acyclic, at most MAX_DEPTH deep, at most MAX_OBJECTS
    objects counting shared ones at each place they occur (what a walk over it would see)."""
    size: dict[int, int] = {}
    depth: dict[int, int] = {}
    on_path: set[int] = set()
    # Iterative depth-first walk: (node, children visited?)
    todo: list[tuple[_Node, bool]] = [(root, False)]
    while todo:
        node, done = todo.pop()
        key = id(node)
        if done:
            on_path.discard(key)
            size[key] = 1 + sum(size[id(c)] for c in node.children)
            depth[key] = 1 + max((depth[id(c)] for c in node.children), default=0)
            if size[key] > MAX_OBJECTS or depth[key] > MAX_DEPTH:
                raise WeightsFileError(
                    "its pickle builds a structure too large or too deep for a state dict "
                    f"(over {MAX_OBJECTS:,} objects or {MAX_DEPTH} levels)")
            continue
        if key in size:
            continue
        if key in on_path:
            raise WeightsFileError("its pickle puts an object inside itself")
        on_path.add(key)
        todo.append((node, True))
        todo += [(c, False) for c in node.children if id(c) not in size]


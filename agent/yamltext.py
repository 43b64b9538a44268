"""YAML from inputs (manifests, machine configs, policies, a Talos-written list), bounded.

yaml.safe_load alone is not safe against hostile text: aliases let a few hundred bytes
stand for gigabytes once something walks the result (or a merge key copies them), and
deep nesting ends in RecursionError. This loader refuses aliases (no Talos file needs
them), refuses nesting deeper than MAX_DEPTH, and turns every failure (a bad integer past
Python's digit limit, a bad timestamp) into YamlError, whose text is the reason. yaml is
imported only when YAML is read.
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

MAX_DEPTH = 64

_loader: Any = None


class YamlError(ValueError):
    """The text is not YAML this project reads; str() is the reason."""


def loader_class() -> Any:
    global _loader
    if _loader is not None:
        return _loader
    import yaml

    class BoundedLoader(yaml.SafeLoader):
        depth = 0

        def compose_node(self, parent: Any, index: Any) -> Any:
            if self.check_event(yaml.AliasEvent):
                mark = self.peek_event().start_mark  # type: ignore[no-untyped-call]
                raise YamlError(f"uses a YAML alias at line {mark.line + 1} "
                                "(aliases are not supported)")
            self.depth += 1
            try:
                if self.depth > MAX_DEPTH:
                    mark = self.peek_event().start_mark  # type: ignore[no-untyped-call]
                    raise YamlError(f"nested deeper than {MAX_DEPTH} levels at line "
                                    f"{mark.line + 1}")
                return super().compose_node(parent, index)
            finally:
                self.depth -= 1

    _loader = BoundedLoader
    return _loader


def load_all(text: str) -> list[Any]:
    """Every document of `text`; YamlError with the reason when it is not usable."""
    import yaml

    try:
        return list(yaml.load_all(text, Loader=loader_class()))
    except YamlError:
        raise
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark is not None else ""
        raise YamlError(f"not valid YAML{at}") from None
    except (ValueError, TypeError, OverflowError, RecursionError) as exc:
        # a constructor refusing a scalar: int('9' * 5000), a 13th month, a float overflow
        why = str(exc).split(":")[0].strip()[:100] or type(exc).__name__
        raise YamlError(f"not valid YAML: {why}") from None


def load(text: str) -> Any:
    """The single document of `text` (None when empty)."""
    docs = load_all(text)
    if len(docs) > 1:
        raise YamlError(f"holds {len(docs)} YAML documents, expected one")
    return docs[0] if docs else None

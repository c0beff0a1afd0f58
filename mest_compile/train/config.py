"""The training configuration: frozen sections, one per concern, built from YAML and command-line flags.

`TrainConfig` holds the trainer's own sections (`data`, `sparse`, `optim`, `run`) and one section
per registered training algorithm (`mutation`, `data_efficiency`, `compile`, ...; see
`mest_compile.algorithms`). Every setting keeps one flat name, unique across sections and named
like MEST's script variables: that name is the `train` flag (`--lower-bound`), the flat YAML key
(MEST's recipes in `configs/` are flat), a keyword of `TrainConfig(...)` and `dataclasses.replace`,
and an attribute (`config.lower_bound` reads `config.mutation.lower_bound`). YAML may also nest
settings under their section (`mutation: {lower_bound: 0.9}`).

Example:
    >>> config = TrainConfig(scheme="block", lower_bound="0.9", upper_bound="0.85", mask_update_decay_epoch="20")
    >>> config.sparse.scheme, config.mutation.upper_bound
    ('block', '0.85')
"""

from __future__ import annotations

import dataclasses
import pathlib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

import yaml

from mest_compile.algorithms import algorithm_specs
from mest_compile.errors import MestError, first_line
from mest_compile.train.sections import CORE_SECTIONS, DataConfig, OptimConfig, RunConfig, SparseConfig


def section_types() -> dict[str, type]:
    """Every section by name: the trainer's own, then each registered algorithm's.

    Raises:
        ValueError: two sections share a setting name (flat names would be ambiguous).
    """
    sections = dict(CORE_SECTIONS)
    for spec in algorithm_specs().values():
        # Algorithms may share one section (SparCL's three parts): the same dataclass, declared once.
        if spec.section in sections and sections[spec.section] is spec.config:
            continue
        if spec.section in sections:
            raise ValueError(f"config section {spec.section!r} is declared twice")
        sections[spec.section] = spec.config
    owners: dict[str, str] = {}
    for name, kind in sections.items():
        for spec_field in fields(kind):
            if spec_field.name in owners or spec_field.name in sections:
                raise ValueError(f"setting {spec_field.name!r} of section {name!r} clashes with another setting or "
                                 "section name")
            owners[spec_field.name] = name
    return sections


def setting_fields() -> dict[str, tuple[str, dataclasses.Field]]:
    """Flat setting name -> (its section, its field), in section order (the order of `--help`)."""
    return {f.name: (name, f) for name, kind in section_types().items() for f in fields(kind)}


@dataclass(frozen=True, init=False)
class TrainConfig:
    """Everything a training run depends on, in sections.

    Build it with sections, flat settings, or both (flat settings are applied to the sections
    given); `dataclasses.replace(config, epochs=5)` works the same way.
    """

    data: DataConfig
    sparse: SparseConfig
    optim: OptimConfig
    run: RunConfig
    # Each registered training algorithm's section, by section name (read them as attributes).
    algorithms: Mapping[str, Any] = field(hash=False)

    def __init__(self, data: DataConfig | None = None, sparse: SparseConfig | None = None,
                 optim: OptimConfig | None = None, run: RunConfig | None = None,
                 algorithms: Mapping[str, Any] | None = None, **settings: Any) -> None:
        types = section_types()
        given = {"data": data, "sparse": sparse, "optim": optim, "run": run, **dict(algorithms or {})}
        sections: dict[str, Any] = {}
        for name, kind in types.items():
            value = given.pop(name, None)
            if value is not None and not isinstance(value, kind):
                raise MestError(f"config section {name} must be a {kind.__name__}, got {type(value).__name__}")
            sections[name] = value if value is not None else kind()
        if given:
            raise MestError(f"unknown config section {sorted(given)[0]!r}; known: {', '.join(types)}")
        owners = setting_fields()
        changes: dict[str, dict[str, Any]] = {}
        for key, value in settings.items():
            if key not in owners:
                raise MestError(f"unknown setting {key!r}; known settings: {', '.join(owners)}")
            changes.setdefault(owners[key][0], {})[key] = value
        for name, values in changes.items():
            sections[name] = dataclasses.replace(sections[name], **values)
        for name in CORE_SECTIONS:
            object.__setattr__(self, name, sections.pop(name))
        object.__setattr__(self, "algorithms", sections)

    def __getattr__(self, name: str) -> Any:
        # Only reached when normal lookup fails: algorithm sections and flat setting names.
        sections = self.__dict__.get("algorithms")
        if sections is None or name.startswith("__"):
            raise AttributeError(name)
        if name in sections:
            return sections[name]
        for section in (self.data, self.sparse, self.optim, self.run, *sections.values()):
            if name in section.__dataclass_fields__:
                return getattr(section, name)
        raise AttributeError(f"TrainConfig has no setting or section {name!r}")

    def section(self, name: str) -> Any:
        """The section called `name` (a core one or an algorithm's)."""
        if name in CORE_SECTIONS:
            return getattr(self, name)
        if name not in self.algorithms:
            raise MestError(f"unknown config section {name!r}; known: {', '.join([*CORE_SECTIONS, *self.algorithms])}")
        return self.algorithms[name]

    def to_dict(self) -> dict[str, Any]:
        """Nested plain data, one mapping per section (YAML/JSON/checkpoint friendly)."""
        out = {name: dataclasses.asdict(getattr(self, name)) for name in CORE_SECTIONS}
        out.update({name: dataclasses.asdict(section) for name, section in self.algorithms.items()})
        return {name: {k: list(v) if isinstance(v, tuple) else v for k, v in values.items()}
                for name, values in out.items()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "config") -> TrainConfig:
        """Build from flat settings, nested sections, or a mix; unknown keys are errors.

        Old checkpoints hold flat dicts, new ones nested: both are read.
        """
        owners = setting_fields()
        values = {key: _coerce(owners[key][1], value, source) for key, value in flatten(data, source).items()}
        return cls(**values)

    @classmethod
    def load(cls, path: str | pathlib.Path | None, overrides: Mapping[str, Any]) -> TrainConfig:
        """A YAML file (or nothing) overlaid with flags that were given (None means not given)."""
        data: dict[str, Any] = {}
        if path is not None:
            file = pathlib.Path(path)
            if not file.is_file():
                raise MestError(f"config file {str(file)!r} does not exist")
            try:
                loaded = yaml.safe_load(file.read_text())
            except yaml.YAMLError as exc:
                raise MestError(f"config file {str(file)!r} is not valid YAML: {first_line(exc)}") from None
            if loaded is not None and not isinstance(loaded, dict):
                raise MestError(f"config file {str(file)!r} must hold a mapping of settings")
            data = flatten(loaded or {}, str(file))
        data.update({k: v for k, v in overrides.items() if v is not None})
        return cls.from_dict(data, source=str(path) if path else "flags")


def flatten(data: Mapping[str, Any], source: str) -> dict[str, Any]:
    """Flat settings from flat keys and nested sections (`-` in keys read as `_`).

    Raises:
        MestError: an unknown key (listing the known ones), a section that is not a mapping,
            or one setting given twice.
    """
    owners = setting_fields()
    sections = section_types()
    flat: dict[str, Any] = {}

    def add(key: str, value: Any) -> None:
        if key in flat:
            raise MestError(f"{source}: {key} is given twice (flat and in section {owners[key][0]})")
        flat[key] = value

    for raw_key, value in data.items():
        key = str(raw_key).replace("-", "_")
        if key in sections:
            if value is None:
                continue
            if not isinstance(value, Mapping):
                raise MestError(f"{source}: {key} is a section; give it a mapping of settings, got {value!r}")
            known = [f.name for f in fields(sections[key])]
            for raw_inner, inner in value.items():
                name = str(raw_inner).replace("-", "_")
                if name not in known:
                    raise MestError(f"{source}: unknown key '{key}.{name}'; known keys of {key}: {', '.join(known)}")
                add(name, inner)
        elif key in owners:
            add(key, value)
        else:
            raise MestError(f"{source}: unknown key {key!r}; known keys: {', '.join(owners)} "
                            f"(or nested under the sections {', '.join(sections)})")
    return flat


def _coerce(spec: dataclasses.Field, value: Any, source: str) -> Any:
    """Check a YAML value against the field's type; bound strings may be written as numbers."""
    kind = str(spec.type)
    if value is None:
        if kind.startswith("tuple"):  # `compat:` with nothing after it: no switches
            return ()
        if "None" in kind:
            return None
        raise MestError(f"{source}: {spec.name} may not be empty")
    if spec.metadata.get("text"):
        return str(value)
    try:
        if kind.startswith("bool"):
            if not isinstance(value, bool):
                raise ValueError
            return value
        if kind.startswith("int"):
            if isinstance(value, bool) or float(value) != int(value):
                raise ValueError
            return int(value)
        if kind.startswith("float"):
            return float(value)
        if kind.startswith("str"):
            return str(value)
        if kind.startswith("tuple"):  # a comma-separated string or a list
            return tuple(value.split(",") if isinstance(value, str) else value or ())
    except (TypeError, ValueError):
        raise MestError(f"{source}: {spec.name} has the wrong type: {value!r}") from None
    return value


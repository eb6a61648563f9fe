"""Where a search's Optuna study lives (`hydra.sweeper.storage`): null is the journal file `optuna.journal` in the
sweep dir; else an Optuna RDB storage URL (mysql+pymysql://..., postgresql+psycopg://..., sqlite:///...); the study's
name there, and how to open it (`load_study`; `find_study` from a sweep dir alone, as the report does).

A URL's password never appears as written: it comes from the environment (`${oc.env:VAR}`) and the URL is kept
unresolved (`spec`) wherever it is pickled, saved or printed; only `open` resolves it, in the process that connects.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from fmsweep.errors import UserError

if TYPE_CHECKING:
    from optuna.storages import BaseStorage

JOURNAL = "optuna.journal"
STUDY = "fmsweep"
ENV_PASSWORD = "${oc.env:FMSWEEP_DB_PASSWORD}"
# a URL's password: scheme://user:PASSWORD@ (up to the address's last @), or a password= query parameter
SECRETS = (
    re.compile(
        r"(?P<head>[\w+.-]+://(?:\$\{[^}]*\}|[^:/@\s'\"$]|\$(?!\{))*:)"
        r"(?P<password>[^\s'\"]*)(?P<tail>@)"
    ),
    re.compile(r"(?P<head>[?&](?:password|passwd)=)(?P<password>[^&\s'\"]*)(?P<tail>)"),
)
# a password taken from elsewhere: interpolations only, none with a default (`${oc.env:VAR,default}` writes one)
INTERPOLATED = re.compile(r"(?:\$\{[^{},]*\})+")
# the pip package of a database driver, where it is not the module's name
PIP_NAMES = {"MySQLdb": "mysqlclient", "psycopg2": "psycopg2-binary", "psycopg": "'psycopg[binary]'"}


def _is_literal(password: str) -> bool:
    return bool(password) and not INTERPOLATED.fullmatch(password)


def _replace_passwords(text: str, replacement: str) -> str:
    """`text` with each written (not interpolated) URL password in it replaced by `replacement`."""
    for pattern in SECRETS:
        text = pattern.sub(
            lambda m: m["head"] + (replacement if _is_literal(m["password"]) else m["password"]) + m["tail"], text
        )
    return text


def _first_line(exc: BaseException) -> str:
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


def mask(text: str) -> str:
    """`text` with every URL password in it (user:password@, ?password=) replaced by ***, for what is printed or
    raised; passwords written as interpolations (`${oc.env:VAR}`) stay, as they hold no secret."""
    return _replace_passwords(text, "***")


def spec(config: DictConfig | ListConfig) -> str | None:
    """The storage as `config` (the whole config, with its hydra node) writes it, interpolations unresolved: what
    is pickled into jobs and recorded, never the resolved password. None: the journal in the sweep dir."""
    sweeper = OmegaConf.select(config, "hydra.sweeper")
    value = (
        cast(dict[str, Any], OmegaConf.to_container(sweeper, resolve=False)).get("storage")
        if sweeper is not None
        else None
    )
    return None if value is None else str(value)


def resolve(spec: str) -> str:
    """The URL `spec` stands for, its interpolations (`${oc.env:VAR}`) resolved: a missing variable is a UserError
    naming it."""
    try:
        return str(OmegaConf.create({"storage": spec}).storage)
    except OmegaConfBaseException as exc:
        missing = re.search(r"Environment variable '([^']+)' not found", str(exc))
        if missing:
            name = missing[1]
            raise UserError(
                f"hydra.sweeper.storage {mask(spec)} needs the environment variable {name}, which is "
                f"not set: export {name}=... (where its jobs run too)"
            ) from None
        raise UserError(f"hydra.sweeper.storage {mask(spec)}: {mask(_first_line(exc))}") from None


def check(spec: str | None) -> None:
    """Refuse, before anything is launched, a storage the search could not or should not use: a password written
    in the URL (it would be saved with the sweep and seen in the process list), a URL that is no Optuna RDB
    storage, a driver that is not installed, an in-memory sqlite database. Connects to nothing."""
    if spec is None:
        return
    from_environment = _replace_passwords(spec, ENV_PASSWORD)
    if from_environment != spec:
        raise UserError(
            f"hydra.sweeper.storage {mask(spec)} writes its password, which would be saved with the "
            f"sweep and shown in the process list: export FMSWEEP_DB_PASSWORD=... and take it from the "
            f"environment, hydra.sweeper.storage='{from_environment}'; nothing was launched"
        )
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    url = resolve(spec)
    try:
        parsed = make_url(url)
        dialect = parsed.get_dialect()
    except ArgumentError:
        raise UserError(
            f"hydra.sweeper.storage {mask(spec)} is not a database URL Optuna's RDB storage takes: "
            f"e.g. mysql+pymysql://USER:{ENV_PASSWORD}@HOST/DB, postgresql+psycopg://..., "
            f"sqlite:///PATH, or null for {JOURNAL} in the sweep dir; nothing was launched"
        ) from None
    try:
        # SQLAlchemy 2 imports the driver with import_dbapi, 1.4 with dbapi
        (getattr(dialect, "import_dbapi", None) or dialect.dbapi)()  # type: ignore[operator, misc]  # 1.4's dbapi is a classmethod, 2's stubs type it as the module
    except ImportError as exc:
        module = (exc.name or parsed.get_driver_name()).split(".")[0]
        raise UserError(
            f"hydra.sweeper.storage {mask(spec)} needs the database driver {module}, which is not "
            f"installed: pip install {PIP_NAMES.get(module, module)}; nothing was launched"
        ) from None
    if parsed.get_backend_name() == "sqlite" and parsed.database in (None, "", ":memory:"):
        raise UserError(
            f"hydra.sweeper.storage {mask(spec)} is an in-memory database, which the search's jobs "
            f"cannot see and which ends with the command: give a file, sqlite:///PATH; nothing was "
            f"launched"
        )
    if "@" in (parsed.host or ""):
        raise UserError(
            f"hydra.sweeper.storage {mask(spec)}: its password holds an @, which ends the password in "
            f"a URL: URL-encode it (urllib.parse.quote_plus) in the environment variable; nothing was "
            f"launched"
        )


def _masked_url(url: str) -> str:
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        return mask(make_url(url).render_as_string(hide_password=True))
    except ArgumentError:
        return mask(url)


def open(spec: str | None, sweep_dir: Path) -> BaseStorage:
    """The Optuna storage of a search in `sweep_dir`: the journal file there, or
    the database `spec` names, resolved and connected here; a database that cannot be opened is a UserError with
    the URL's password masked."""
    import optuna
    from sqlalchemy.exc import SQLAlchemyError

    if spec is None:
        from optuna.storages.journal import JournalFileBackend

        return optuna.storages.JournalStorage(JournalFileBackend(str(sweep_dir / JOURNAL)))
    url = resolve(spec)
    try:
        # pool_pre_ping: a connection the server closed while a trial trained is replaced, not failed
        return optuna.storages.RDBStorage(url, engine_kwargs={"pool_pre_ping": True})
    except (SQLAlchemyError, ImportError, RuntimeError, ValueError, KeyError, IndexError) as exc:
        # ValueError, KeyError, IndexError: Optuna fills the URL as a str.format template; RuntimeError: its schema
        raise UserError(f"cannot open the Optuna storage {_masked_url(url)}: {mask(_first_line(exc))}") from None


def describe(spec: str | None, sweep_dir: Path) -> str:
    """Where the study lives, for what is printed and recorded: the journal's path, or the URL as written with any
    password masked."""
    return str(sweep_dir / JOURNAL) if spec is None else mask(spec)


def study_name(spec: str | None, sweep_dir: Path) -> str:
    """The study's name: `fmsweep` in the sweep dir's own journal; in a shared storage (a URL), one per sweep dir."""
    return STUDY if spec is None else f"{STUDY}:{Path(sweep_dir).resolve()}"


def load_study(spec: str | None, sweep_dir: Path) -> Any:
    """The study of the search in `sweep_dir` whose storage is `spec`."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna.load_study(study_name=study_name(spec, sweep_dir), storage=open(spec, sweep_dir))


def find_study(sweep_dir: Path) -> Any | None:
    """The study of the search in `sweep_dir`, in the storage its multirun.yaml names; None when it holds no
    search."""
    saved, written = sweep_dir / "multirun.yaml", None
    if saved.is_file():
        config = OmegaConf.load(saved)
        if not str(OmegaConf.select(config, "hydra.sweeper._target_", default="")).endswith(".SearchSweeper"):
            return None
        written = spec(config)
    if written is None and not (sweep_dir / JOURNAL).is_file():
        return None
    return load_study(written, sweep_dir)

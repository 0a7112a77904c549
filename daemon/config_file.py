"""Writing config.yaml from the setup page: changed keys only, comments and layout kept.

The file is edited as a round-trip YAML document (ruamel.yaml), so every comment, the key
order and the flow style of ``region: {x: 0, ...}`` survive a save; only the values that
changed are rewritten. The new text is checked with the loader the daemon uses (PyYAML and
the schema, as ``check-config`` does) before it replaces the file atomically (a temporary file
in the same folder, fsync, rename); the previous file is kept as ``<file>.bak``.
"""

import io
import logging
import os
import re
import shutil
import tempfile

import yaml

from daemon import config as config_module

log = logging.getLogger(__name__)

BACKUP_SUFFIX = ".bak"


class ConfigFileError(Exception):
    """The config file could not be read or written; the file on disk is unchanged."""


def _round_trip_yaml():
    from ruamel.yaml import YAML

    handler = YAML()  # round-trip mode: comments, order and styles are kept
    handler.preserve_quotes = True
    handler.width = 4096  # never fold a long value onto a second line
    return handler


def read_text(path):
    """The file's text (ConfigFileError when it cannot be read)."""
    try:
        with open(path) as handle:
            return handle.read()
    except OSError as exc:
        raise ConfigFileError("cannot read %s (%s)" % (path, exc.strerror or exc)) from exc


def plain_data(text, path="config"):
    """What the daemon's loader (PyYAML) makes of the text: plain dicts, lists and scalars."""
    try:
        return yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise ConfigFileError("%s: not valid YAML: %s" % (path, str(exc).replace("\n", " "))) from exc


def _yaml_scalar(value):
    """A value as ruamel should write it: strings PyYAML would read as something else (yes,
    0123, 12:30, an empty string) are quoted, so the file says what the page meant."""
    from ruamel.yaml.scalarstring import SingleQuotedScalarString

    if isinstance(value, str):
        try:
            read_back = yaml.safe_load(value)
        except yaml.YAMLError:
            read_back = None
        if read_back != value or value != value.strip():
            return SingleQuotedScalarString(value)
    return value


def _yaml_value(value):
    """Lists of mappings (roi.boxes) are written one flow mapping per line: ``- {id: a, x: 1}``."""
    from ruamel.yaml.comments import CommentedMap, CommentedSeq

    if isinstance(value, list):
        seq = CommentedSeq()
        for item in value:
            seq.append(_yaml_value(item))
        if not value:
            seq.fa.set_flow_style()
        return seq
    if isinstance(value, dict):
        mapping = CommentedMap()
        for key, item in value.items():
            mapping[key] = _yaml_value(item)
        mapping.fa.set_flow_style()
        return mapping
    return _yaml_scalar(value)


def _assign(container, key, value):
    """Set ``container[key]``; a mapping or list already there is updated in place, so the
    comments on its items (a box's ``# the meter's first digit``) stay."""
    from ruamel.yaml.comments import CommentedMap, CommentedSeq

    old = container[key] if key in container or isinstance(container, list) else None
    if isinstance(old, CommentedMap) and isinstance(value, dict):
        for item_key in [k for k in old if k not in value]:
            del old[item_key]
        for item_key, item in value.items():
            _assign(old, item_key, item)
    elif isinstance(old, CommentedSeq) and isinstance(value, list) and value and len(old):
        del old[len(value) :]
        for index, item in enumerate(value):
            if index < len(old):
                _assign(old, index, item)
            else:
                old.append(_yaml_value(item))
    elif not (type(old) is type(value) and old == value):  # an equal value keeps its quoting
        container[key] = _yaml_value(value)
        if isinstance(old, CommentedSeq) and not len(old) and isinstance(value, list) and value:
            _keep_blank_lines_after(container, key)


def _keep_blank_lines_after(container, key):
    """``boxes: []  # comment`` followed by a blank line, now a block list: the comment stays on
    the key's line and the blank lines move below the last item (not between comment and items)."""
    from ruamel.yaml.error import CommentMark
    from ruamel.yaml.tokens import CommentToken

    entry = getattr(container, "ca", None) and container.ca.items.get(key)
    token = entry[2] if entry and len(entry) > 2 else None
    if token is None or not token.value.endswith("\n\n"):
        return
    blank_lines = len(token.value) - len(token.value.rstrip("\n")) - 1
    token.value = token.value.rstrip("\n") + "\n"
    items = container[key]
    items.ca.items[len(items) - 1] = [CommentToken("\n" * (blank_lines + 1), CommentMark(0), None), None]


def _sequence_indent(text):
    """(sequence, offset) for ruamel: the file's own block-list style, ``  - item`` under its
    key by default, ``- item`` level with the key when the file does it that way."""
    match = re.search(r"^( *)[^\s#-][^:\n]*:[ \t]*(?:#.*)?\n( *)- ", text, re.MULTILINE)
    if match and len(match.group(2)) == len(match.group(1)):
        return 2, 0
    return 4, 2


def set_values(text, changes):
    """Return ``text`` with each (key path tuple, value) of ``changes`` set, all else kept."""
    from ruamel.yaml.comments import CommentedMap
    from ruamel.yaml.error import YAMLError

    handler = _round_trip_yaml()
    sequence, offset = _sequence_indent(text)
    handler.indent(mapping=2, sequence=sequence, offset=offset)
    try:
        document = handler.load(text)
    except YAMLError as exc:
        raise ConfigFileError("not valid YAML: %s" % str(exc).replace("\n", " ")) from exc
    if document is None:
        document = CommentedMap()
    if not isinstance(document, dict):
        raise ConfigFileError("the file does not hold a mapping at its top level")
    for keys, value in changes:
        section = document
        for key in keys[:-1]:
            if not isinstance(section.get(key), dict):
                section[key] = CommentedMap()
            section = section[key]
        _assign(section, keys[-1], value)
    out = io.StringIO()
    handler.dump(document, out)
    return out.getvalue()


def write_atomically(path, text):
    """Replace ``path`` with ``text`` (same permissions); the previous file becomes
    ``<path>.bak``. Returns the backup's path. On any error the file is as it was."""
    folder = os.path.dirname(os.path.abspath(path))
    backup = path + BACKUP_SUFFIX
    temporary = None
    try:
        mode = os.stat(path).st_mode & 0o777 if os.path.exists(path) else 0o644
        handle, temporary = tempfile.mkstemp(prefix=".config-", suffix=".tmp", dir=folder)
        with os.fdopen(handle, "w") as out:
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(temporary, mode)
        if os.path.exists(path):
            shutil.copy2(path, backup + ".tmp")
            os.replace(backup + ".tmp", backup)
        os.replace(temporary, path)
        temporary = None
        _fsync_folder(folder)
    except OSError as exc:
        raise ConfigFileError(
            "cannot write %s (%s); the file is unchanged" % (path, exc.strerror or exc)
        ) from exc
    finally:
        if temporary is not None and os.path.exists(temporary):
            os.unlink(temporary)
    return backup


def write_file_atomically(path, data, mode=0o644):
    """Replace ``path`` with the bytes ``data`` (a temporary file in the same folder, fsync,
    rename): a reader sees the old file or the new one, never a part. OSError as it comes."""
    folder = os.path.dirname(os.path.abspath(path))
    handle, temporary = tempfile.mkstemp(prefix=".digitd-", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(handle, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(temporary, mode)
        os.replace(temporary, path)
        temporary = None
        _fsync_folder(folder)
    finally:
        if temporary is not None and os.path.exists(temporary):
            os.unlink(temporary)


def _fsync_folder(folder):
    """Make the rename itself durable (a power cut right after a save keeps the new file)."""
    try:
        descriptor = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)


def save(path, changes, expected):
    """Write ``changes`` into the file at ``path`` after checking that the result loads (as
    ``check-config`` loads it) into exactly ``expected``, the validated config the caller
    meant. Returns the backup's path; raises ConfigFileError and leaves the file alone otherwise."""
    text = read_text(path)
    new_text = set_values(text, changes)
    base_dirs = (os.path.dirname(os.path.abspath(path)), config_module.PROJECT_ROOT)
    try:
        written = config_module.from_dict(plain_data(new_text, path), base_dirs)
    except config_module.ConfigError as exc:
        raise ConfigFileError("the edited file would not load: %s" % "; ".join(exc.errors)) from exc
    if written != expected:
        raise ConfigFileError("the edited file would not read back as intended; the file is unchanged")
    backup = write_atomically(path, new_text)
    log.info("saved %s (previous version in %s)", path, backup)
    return backup

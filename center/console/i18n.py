"""The console's one gettext catalog (domain ``console``) in Simplified Chinese (default)
and English: the ``.po`` files under ``locale/`` are compiled with Babel when the console
starts, so no compiled file has to be kept in step with them."""

from __future__ import annotations

import gettext
import io
from functools import cache
from pathlib import Path

from babel.messages.mofile import write_mo
from babel.messages.pofile import read_po

LOCALE_DIR = Path(__file__).parent / "locale"
DOMAIN = "console"
LANGS = ("zh_Hans", "en")
DEFAULT = "zh_Hans"


@cache
def translations(lang: str) -> gettext.NullTranslations:
    """The compiled catalog of ``lang`` (an unknown one: the default's)."""
    if lang not in LANGS:
        lang = DEFAULT
    with (LOCALE_DIR / lang / "LC_MESSAGES" / f"{DOMAIN}.po").open("rb") as src:
        catalog = read_po(src, locale=lang.replace("_Hans", "_Hans_CN") if lang != "en" else "en")
    buf = io.BytesIO()
    write_mo(buf, catalog)
    buf.seek(0)
    return gettext.GNUTranslations(buf)


def pick(cookie: str | None, account: str | None) -> str:
    """The language: the cookie's, else the account's, else the default."""
    for lang in (cookie, account):
        if lang in LANGS:
            return str(lang)
    return DEFAULT

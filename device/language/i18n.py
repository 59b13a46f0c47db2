"""The reader's words in its users' language: gettext catalogues (device/locale/<locale>/LC_MESSAGES/
stripread.po, compiled to .mo when the package is built), dates and numbers formatted by Babel's
locale data, and the report style values are shown in.

What a person reads is translated; what a machine reads is not: JSON output, log lines, lab
messages, stored results and codes stay in English and UCUM whatever the language.

The device's language and report style come from its configuration: `--lang` / `--units` on the
command line, else $STRIPREAD_LANG / $STRIPREAD_REPORT_STYLE (deploy/stripread.env), else English
and conventional units. The web interface lets each browser choose its own (a cookie).
"""
from __future__ import annotations

import gettext as _gettext
import io
import os
import re
import string
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from importlib import resources
from pathlib import Path

DOMAIN = "stripread"
LOCALES = ("en", "zh_CN")                     # every locale has a complete catalogue (tests/test_i18n.py)
LANGUAGE_NAMES = {"en": "English", "zh_CN": "中文"}   # each in its own language: what its reader looks for
DEFAULT_LOCALE = "en"
STYLES = ("conventional", "si", "plus")
DEFAULT_STYLE = "conventional"
LOCALE_DIR = Path(str(resources.files("device") / "locale"))


def N_(message: str) -> str:
    """Marks a message for extraction where it is defined; it is translated where it is shown."""
    return message


class LanguageError(ValueError):
    """A language or report style the reader has no catalogue or rule for; the message lists the choices."""


def choose_locale(value: str | None = None) -> str:
    """The configured locale: `value` (a CLI option), else $STRIPREAD_LANG, else English. Accepts
    `zh_CN`, `zh-CN`, `zh_CN.UTF-8` and `zh`."""
    raw = value or os.environ.get("STRIPREAD_LANG") or DEFAULT_LOCALE
    found = match_locale(raw)
    if found is None:
        raise LanguageError(f"no catalogue for the language {raw!r}: choose one of {', '.join(LOCALES)}")
    return found


def match_locale(raw: str) -> str | None:
    """A locale name written any usual way, as one of `LOCALES`; None when there is no catalogue for it."""
    name = raw.split(".")[0].replace("-", "_").strip()
    for locale in LOCALES:
        if name.lower() == locale.lower() or name.lower() == locale.split("_")[0].lower():
            return locale
    return None


def choose_style(value: str | None = None) -> str:
    """The configured report style: `value`, else $STRIPREAD_REPORT_STYLE, else conventional."""
    style = (value or os.environ.get("STRIPREAD_REPORT_STYLE") or DEFAULT_STYLE).strip().lower()
    if style not in STYLES:
        raise LanguageError(f"no report style {style!r}: choose one of {', '.join(STYLES)}")
    return style


@lru_cache(maxsize=len(LOCALES))
def catalogue(locale: str) -> _gettext.GNUTranslations:
    """A locale's compiled catalogue: the .mo built with the package, else (a source checkout) the
    .po compiled in memory by Babel. A missing catalogue is an error, never a silent fall-back."""
    folder = LOCALE_DIR / locale / "LC_MESSAGES"
    mo, po = folder / f"{DOMAIN}.mo", folder / f"{DOMAIN}.po"
    if mo.is_file() and (not po.is_file() or mo.stat().st_mtime >= po.stat().st_mtime):
        with mo.open("rb") as fh:
            return _gettext.GNUTranslations(fh)
    if not po.is_file():
        raise LanguageError(f"no catalogue for {locale!r} in {folder}")
    return _gettext.GNUTranslations(io.BytesIO(compile_po(po)))


def compile_po(po: Path) -> bytes:
    """A .po file as .mo bytes (Babel's compiler: the same at build time and in a source checkout)."""
    from babel.messages.mofile import write_mo
    from babel.messages.pofile import read_po
    with po.open("rb") as fh:
        catalog = read_po(fh)
    out = io.BytesIO()
    write_mo(out, catalog)
    return out.getvalue()


def values_in(template: str, text: str) -> dict[str, str] | None:
    """The placeholder values `template.format_map(values)` filled in to give `text`; None when
    `text` was not made from this template."""
    pattern, seen = [], set()
    for literal, name, _, _ in string.Formatter().parse(template):
        pattern.append(re.escape(literal))
        if name is not None:
            pattern.append(f"(?P={name})" if name in seen else f"(?P<{name}>.*?)")
            seen.add(name)
    found = re.fullmatch("".join(pattern), text, re.DOTALL)
    return None if found is None else found.groupdict()


@dataclass(frozen=True)
class Words:
    """One reader's (or one browser's) language and report style: translating, and formatting
    numbers and dates as that locale writes them."""
    locale: str = DEFAULT_LOCALE
    style: str = DEFAULT_STYLE

    @property
    def lang(self) -> str:
        """The BCP 47 tag for `<html lang>`: zh-CN, en."""
        return self.locale.replace("_", "-")

    def gettext(self, message: str) -> str:
        return catalogue(self.locale).gettext(message)

    def ngettext(self, singular: str, plural: str, n: int) -> str:
        return catalogue(self.locale).ngettext(singular, plural, n)

    def __call__(self, message: str, **values) -> str:
        """`words("{n} pads read", n=3)`: translated, then filled in."""
        text = self.gettext(message)
        return text.format(**values) if values else text

    def retell(self, text: str, templates: tuple[str, ...], **said) -> str:
        """An English text another module filled in from one of `templates` (messages marked with
        `N_`), said again in this language with the same values, each placeholder named in `said`
        passed through its function (`outcome=...`); unchanged when no template made it (the first
        that matches wins: list the longer of two overlapping templates first)."""
        for template in templates:
            values = values_in(template, text)
            if values is not None:
                values.update({name: say(values[name]) for name, say in said.items() if name in values})
                return self.gettext(template).format_map(values)
        return text

    def number(self, value: float, decimals: int = 0) -> str:
        """A number with the locale's decimal sign, to `decimals` places (never grouped: a strip
        value is no amount of money)."""
        from babel.numbers import format_decimal
        pattern = "0" + ("." + "0" * decimals if decimals > 0 else "")
        return format_decimal(value, format=pattern, locale=self.locale)

    def datetime(self, moment: datetime) -> str:
        """A date and time to the minute, as the locale writes it (2026年12月1日 14:05; Dec 1, 2026, 14:05)."""
        return self.date(moment, with_time=True)

    def date(self, moment: datetime, with_year: bool = True, with_time: bool = False) -> str:
        """A short date (Dec 1, 2026 / 2026年12月1日), without the year for a plot's axis, with the
        time to the minute when asked (Dec 1, 14:05 / 12月1日 14:05)."""
        from babel.dates import format_skeleton, format_time
        text = format_skeleton("yMMMd" if with_year else "MMMd", moment, locale=self.locale)
        return f"{text} {format_time(moment, 'HH:mm', locale=self.locale)}" if with_time else text

    def plot_fonts(self) -> list[str]:
        """matplotlib's font families for this language: DejaVu Sans, then (Chinese) Noto Sans CJK
        SC from Debian's fonts-noto-cjk for the characters DejaVu lacks."""
        return _plot_fonts(self.locale)


@lru_cache(maxsize=len(LOCALES))
def _plot_fonts(locale: str) -> list[str]:
    if not locale.startswith("zh"):
        return ["DejaVu Sans"]
    from matplotlib import font_manager
    if "Noto Sans CJK SC" not in {font.name for font in font_manager.fontManager.ttflist}:
        for path in font_manager.findSystemFonts():       # installed after matplotlib cached its font list
            if Path(path).name.startswith("NotoSansCJK-Regular"):
                font_manager.fontManager.addfont(path)
    return ["DejaVu Sans", "Noto Sans CJK SC"]

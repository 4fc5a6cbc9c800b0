"""Pages and buttons use Streamlit's Material icons, never emoji: machines without an emoji font
show emoji as empty boxes."""

import re
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parents[1]
EMOJI = re.compile("[\U0001F000-\U0001FAFF\u2600-\u27BF\u2B00-\u2BFF\uFE0F]")


def web_app_sources() -> list[Path]:
    return [REPOSITORY / "app.py", *sorted((REPOSITORY / "pages").glob("*.py")), *sorted((REPOSITORY / "ui").glob("*.py"))]


def test_the_web_app_shows_no_emoji():
    found = [f"{path.relative_to(REPOSITORY)}:{number}: {line.strip()}"
             for path in web_app_sources()
             for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1) if EMOJI.search(line)]
    assert not found, "emoji in the web app (use :material/...: icons):\n" + "\n".join(found)


def test_every_material_icon_is_well_formed():
    for path in web_app_sources():
        for name in re.findall(r":material/([^:\s\"']*):", path.read_text(encoding="utf-8")):
            assert re.fullmatch(r"[a-z0-9_]+", name), f"{path.name}: :material/{name}: is not an icon name"

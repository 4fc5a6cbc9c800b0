"""Small waits that make browser tests follow Streamlit's rhythm."""


def wait_for_app(page) -> None:
    """Wait until Streamlit has finished its current script run."""
    page.wait_for_selector('[data-testid="stApp"]')
    page.wait_for_function(
        "() => !document.querySelector('[data-testid=\"stStatusWidget\"]')"
        " || !document.querySelector('[data-testid=\"stStatusWidget\"]').innerText.includes('Running')",
        timeout=60_000,
    )

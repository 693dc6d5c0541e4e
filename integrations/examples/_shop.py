"""Two made-up shop tools for the agent examples: a weather lookup and an order lookup.

Their answers are distinctive on purpose, so a result recalled much later is easy to recognise.
"""

from __future__ import annotations

_FORECASTS = {
    "porto": "Porto: 17 C and drizzle; harbour station PX-4412 warns of sea fog after sunset.",
    "lisbon": "Lisbon: 23 C and sunny, light wind from the north-west.",
}
_ORDERS = {"7781": "Order 7781: two walking boots, shipped Monday with carrier Nordpost, due Thursday."}


def get_weather(city: str) -> str:
    """Current weather and warnings for a city."""
    return _FORECASTS.get(city.strip().lower(), f"{city}: no forecast available.")


def find_order(number: str) -> str:
    """Look up a shop order by its order number."""
    return _ORDERS.get(number.strip(), f"No order numbered {number}.")

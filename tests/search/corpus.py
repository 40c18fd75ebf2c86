"""Small hand-written documents with distinct topics, for search tests."""

from __future__ import annotations

SAILING = """# Anchoring

Drop the anchor in sand or mud, never on coral. Pay out five to seven times the depth in
chain so the pull on the anchor stays horizontal. Back down gently under engine to set it.

# Night watch

Show a white masthead light and red and green sidelights at night. The watch keeper scans
the horizon every few minutes and logs every lantern and beacon seen."""

BAKING = """# Sourdough

Feed the starter with equal weights of flour and water the evening before. Mix the dough,
rest it for an hour, then fold it every thirty minutes. Bake in a covered pot at a high
temperature so the crust blisters.

# Croissants

Laminate butter into the dough with three folds, chilling it between each. Proof the shaped
croissants until they wobble, brush with egg and bake until deep brown."""

ASTRONOMY = """# Telescopes

A refracting telescope gathers light with a lens, a reflecting telescope with a mirror. The
aperture decides how faint a star you can see; magnification matters far less.

# Eclipses

A solar eclipse happens when the Moon passes between the Sun and the Earth. Never look at
the Sun without a certified filter, even when most of it is covered."""

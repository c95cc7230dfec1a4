"""Base: what every wing shares, standard library only (the Slicer modules import it on Python
3.9 before numpy or torch may be installed).

Holds: errors (the one-line errors the user sees), jsonable (one rule for plain JSON),
resources (where the bundled model and sample live), settings (training and evaluation
settings, and the one list of networks), version.

May import: nothing (standard library only).
"""

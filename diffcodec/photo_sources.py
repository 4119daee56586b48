"""The reviewed list of offline photograph sources for the ``photos`` corpus (issue #14).

Every image file of each candidate package was looked at (reviewed on Debian bookworm packages and
scikit-image 0.26.0): :data:`KEPT` holds the real colour photographs, :data:`REJECTED` everything
else with the reason. Renders, drawings, paintings and abstract art are out; so are grayscale
photographs (the corpus is colour: RGB with R = G = B everywhere would teach a colour prior nothing
about colour) and scientific imaging (microscopy, fundus, deep-sky composites).

A source is ``(id, package, path, sha256 prefix)``. ``id`` names the photograph: the train/test split
is a hash of it (``diffcodec.photos.split_of``) and the prepared file is ``id`` with ``/`` → ``-``.
``path`` is absolute for Debian packages and inside the wheel (``skimage/data/...``) for
scikit-image. The sha256 prefix is that of the file reviewed; ``prepare`` warns when a package now
ships a different file.

Packages looked at and left out entirely: ukui-wallpapers (12 images, all renders and drawings),
gnome-backgrounds 43.1 (16 WebP images, all renders), sway-backgrounds (logo drawings),
lomiri-wallpapers (one abstract render, warty-final-ubuntu.png).
"""

from __future__ import annotations

from typing import NamedTuple


class Source(NamedTuple):
    id: str  # names the photograph; the split hashes it
    package: str  # Debian package, "scikit-image" (pip wheel) or "" (a plain file)
    path: str
    sha256: str = ""  # prefix of the reviewed file's sha256; "" = not checked


SKIMAGE = "scikit-image"

_MATE = "/usr/share/backgrounds/mate/nature/"
_LOMIRI = "/usr/share/backgrounds/"
_PLASMA = "/usr/share/wallpapers/{}/contents/images/2560x1600.jpg"  # the largest of each wallpaper's sizes

KEPT: tuple[Source, ...] = (
    # mate-backgrounds 1.26.0: nature/ is 12 macro and landscape photographs (JPEG, 1280x1024 .. 2560x1920)
    Source("mate/Aqua", "mate-backgrounds", _MATE + "Aqua.jpg", "5c30118205982da4"),
    Source("mate/Blinds", "mate-backgrounds", _MATE + "Blinds.jpg", "f7aac0dcc2e06d04"),
    Source("mate/Dune", "mate-backgrounds", _MATE + "Dune.jpg", "8a67c2cb0be8c46b"),
    Source("mate/FreshFlower", "mate-backgrounds", _MATE + "FreshFlower.jpg", "972b0a0c4e5e3fa9"),
    Source("mate/Garden", "mate-backgrounds", _MATE + "Garden.jpg", "d3095ee09d425ef2"),
    Source("mate/GreenMeadow", "mate-backgrounds", _MATE + "GreenMeadow.jpg", "8fa0de0aa4089f73"),
    Source("mate/LadyBird", "mate-backgrounds", _MATE + "LadyBird.jpg", "e35a9a4126ef969c"),
    Source("mate/RainDrops", "mate-backgrounds", _MATE + "RainDrops.jpg", "3e4ea9671c28c90a"),
    Source("mate/Storm", "mate-backgrounds", _MATE + "Storm.jpg", "77ca53077831d323"),
    Source("mate/TwoWings", "mate-backgrounds", _MATE + "TwoWings.jpg", "665e5abf8a539907"),
    Source("mate/Wood", "mate-backgrounds", _MATE + "Wood.jpg", "19c78500ac00a622"),
    Source("mate/YellowFlower", "mate-backgrounds", _MATE + "YellowFlower.jpg", "254da96256acb7ad"),
    # lomiri-wallpapers-16.04: 14 of its 15 JPEGs are photographs (1365x1074 .. 5312x2988)
    Source("lomiri/Bridge", "lomiri-wallpapers-16.04", _LOMIRI + "Bridge_by_Sander_Klootwijk.jpg", "bd86b081f9975e2b"),
    Source("lomiri/Dragonfly", "lomiri-wallpapers-16.04", _LOMIRI + "Dragonfly_by_Bolly.jpg", "af5af17841009732"),
    Source("lomiri/Picture_0B", "lomiri-wallpapers-16.04", _LOMIRI + "Picture_0B_by_freespace.jpg", "c8c0ab18e48d9e04"),
    Source("lomiri/Picture_1A", "lomiri-wallpapers-16.04", _LOMIRI + "Picture_1A_by_freespace.jpg", "89e86af38d04daae"),
    Source("lomiri/Wine", "lomiri-wallpapers-16.04", _LOMIRI + "Wine_by_Jakkub_Mede.jpg", "d2e96e6d4da40dd8"),
    Source("lomiri/aitzgorri", "lomiri-wallpapers-16.04", _LOMIRI + "aitzgorri_by_Aitzol_Berasategi.jpg", "66268e7b48f8854d"),
    # a textured wall under coloured light: a photograph, close to a texture
    Source("lomiri/analogpattern", "lomiri-wallpapers-16.04", _LOMIRI + "analogpattern_by_Peter_Nerlich.jpg", "15372488a192b2be"),
    Source("lomiri/free", "lomiri-wallpapers-16.04", _LOMIRI + "free_by_Peter_Nerlich.jpg", "85a5453c2fed514c"),
    Source("lomiri/friends", "lomiri-wallpapers-16.04", _LOMIRI + "friends_by_Aitzol_Berasategi.jpg", "cc40e313c74e421e"),
    Source("lomiri/greentock", "lomiri-wallpapers-16.04", _LOMIRI + "greentock_by_Peter_Nerlich.jpg", "e7b20e2db9dcd6e2"),
    Source("lomiri/life", "lomiri-wallpapers-16.04", _LOMIRI + "life_by_Aitzol_Berasategi.jpg", "4c119350ead80201"),
    Source("lomiri/picosdeeuropa", "lomiri-wallpapers-16.04", _LOMIRI + "picosdeeuropa_by_Aitzol_Berasategi.jpg", "414d0072b2f6f2c5"),
    Source("lomiri/seeding", "lomiri-wallpapers-16.04", _LOMIRI + "seeding_by_Clements_Engelhardt.jpg", "a5634d1ab5e41a35"),
    Source("lomiri/sunset", "lomiri-wallpapers-16.04", _LOMIRI + "sunset_by_Aitzol_Berasategi.jpg", "474dab6a4b9f94dc"),
    # lomiri-wallpapers-20.04: 1 of its 4
    Source("lomiri/Kleiber", "lomiri-wallpapers-20.04", _LOMIRI + "Kleiber_by_Lukas_Baubkus.jpg", "6572410c09f4492c"),
    # plasma-workspace-wallpapers 5.27.5: 9 of its 30 wallpapers are colour photographs
    Source("plasma/BytheWater", "plasma-workspace-wallpapers", _PLASMA.format("BytheWater"), "c272434ef39f2abf"),
    Source("plasma/ColorfulCups", "plasma-workspace-wallpapers", _PLASMA.format("ColorfulCups"), "6e0f3a72feb5a4a9"),
    Source("plasma/DarkestHour", "plasma-workspace-wallpapers", _PLASMA.format("DarkestHour"), "8e3703fae3a3c217"),
    Source("plasma/EveningGlow", "plasma-workspace-wallpapers", _PLASMA.format("EveningGlow"), "586682dcb362b9f6"),
    Source("plasma/FallenLeaf", "plasma-workspace-wallpapers", _PLASMA.format("FallenLeaf"), "95603a6560c7e8d5"),
    Source("plasma/Kite", "plasma-workspace-wallpapers", _PLASMA.format("Kite"), "bdca288ce296a981"),
    Source("plasma/OneStandsOut", "plasma-workspace-wallpapers", _PLASMA.format("OneStandsOut"), "cb507baf1dafdcae"),
    Source("plasma/Path", "plasma-workspace-wallpapers", _PLASMA.format("Path"), "7477457d7f17b736"),
    Source("plasma/summer_1am", "plasma-workspace-wallpapers", _PLASMA.format("summer_1am"), "c868b50789591dd4"),
    # scikit-image's bundled colour photographs (already small: 451x300 .. 741x500)
    Source("skimage/astronaut", SKIMAGE, "skimage/data/astronaut.png", "88431cd9653ccd53"),
    Source("skimage/chelsea", SKIMAGE, "skimage/data/chelsea.png", "596aa1e7cb875eb7"),
    Source("skimage/coffee", SKIMAGE, "skimage/data/coffee.png", "cc02f8ca188b167c"),
    Source("skimage/rocket", SKIMAGE, "skimage/data/rocket.jpg", "c2dd0de7c538df8d"),
    Source("skimage/motorcycle_left", SKIMAGE, "skimage/data/motorcycle_left.png", "db18e9c415761740"),
)

# (package, file or wallpaper name, why it is not in the corpus)
REJECTED: tuple[tuple[str, str, str], ...] = (
    ("mate-backgrounds", "abstract/Elephants*.jpg", "a painting (3 sizes of one)"),
    ("mate-backgrounds", "abstract/{Arc-Colors-Transparent-Wallpaper,Flow,Gulp,Silk,Spring,Waves}.png", "abstract renders"),
    ("mate-backgrounds", "desktop/{Float-into-MATE,MATE-Stripes-*,Stripes}.png, GreenTraditional.jpg", "logos and stripes"),
    ("mate-backgrounds", "desktop/Ubuntu-Mate-{Cold,Dark,Radioactive,Warm}-no-logo.png", "four colour grades of one processed aurora-like image; not clearly a photograph"),
    ("lomiri-wallpapers-16.04", "umang_by_Abhishek_Mudgal.jpg", "abstract render (gradient)"),
    ("lomiri-wallpapers-20.04", "Fossa_by_Jasper_Roks.jpg", "abstract render"),
    ("lomiri-wallpapers-20.04", "Infinite-Sea_by_Aury88.jpg", "composite render (milky way over a drawn sea)"),
    ("lomiri-wallpapers-20.04", "Painting-Colors_by__herobrine7gamer.jpg", "flat colour bands (drawing)"),
    ("plasma-workspace-wallpapers", "Autumn", "a painting"),
    ("plasma-workspace-wallpapers", "ColdRipple", "grayscale photograph (R = G = B)"),
    ("plasma-workspace-wallpapers", "Grey", "grayscale photograph (mode L)"),
    ("plasma-workspace-wallpapers", "FlyingKonqui, SafeLanding", "drawings"),
    ("plasma-workspace-wallpapers",
     "Altai, Canopee, Cascade, Cluster, Elarun, Flow, Honeywave, IceCold, Kay, Kokkini, MilkyWay, Opal, "
     "PastelHills, Patak, Shell, Volna", "renders and abstract art"),
    (SKIMAGE, "motorcycle_right.png", "the right view of the motorcycle_left stereo pair: a near duplicate"),
    (SKIMAGE, "camera, brick, grass, gravel, coins, moon, clock_motion, page, text", "grayscale photographs"),
    (SKIMAGE, "hubble_deep_field.jpg, ihc.png, retina.jpg, cell.png, microaneurysms.png", "scientific imaging (deep sky, microscopy, fundus)"),
    (SKIMAGE, "color, horse, logo, phantom, chessboard_*", "synthetic images and drawings"),
)

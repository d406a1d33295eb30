"""The Debian package-section sets: which texts get which section, and which are left out."""

from __future__ import annotations

from pathlib import Path

from tlserve.trainer.debian_data import section_sets

PACKAGES = """\
Package: fping
Section: net
Description: sends ICMP ECHO_REQUEST packets to network hosts
Description-md5: 11111111111111111111111111111111

Package: gnubg
Section: contrib/games
Description: graphical or console backgammon program
Description-md5: 22222222222222222222222222222222

Package: libfoo1
Section: libs
Description: foo library
Description-md5: 33333333333333333333333333333333

Package: foo-utils
Section: utils
Description: tools for foo
Description-md5: 44444444444444444444444444444444

Package: foo-net
Section: net
Description: tools for foo
Description-md5: 55555555555555555555555555555555
"""

TRANSLATION = """\
Package: fping
Description-md5: 11111111111111111111111111111111
Description-fr: envoie des paquets ICMP aux hôtes
 fping est un programme comme ping.
 .
 Il envoie des paquets à plusieurs hôtes.

Package: gnubg
Description-md5: 22222222222222222222222222222222
Description-fr: jeu de backgammon

Package: libfoo1
Description-md5: 33333333333333333333333333333333
Description-fr: bibliothèque foo
 Fichiers partagés.

Package: ghost
Description-md5: 99999999999999999999999999999999
Description-fr: paquet absent de l'index
"""


def test_sections_label_texts_and_the_rest_feeds_the_corpus(tmp_path: Path) -> None:
    packages, translation = tmp_path / "Packages", tmp_path / "Translation-fr"
    packages.write_text(PACKAGES, encoding="utf-8")
    translation.write_text(TRANSLATION, encoding="utf-8")
    synopses, french, outside = section_sets(packages, translation)
    # "contrib/games" is the games section; "libs" is a packaging kind, not a topic; "tools for foo" is listed
    # under two sections and dropped.
    assert synopses == [("sends ICMP ECHO_REQUEST packets to network hosts", "net"),
                        ("graphical or console backgammon program", "games")]
    # The long description joins the synopsis, without the lone-dot paragraph mark; a translation whose
    # package is not in the index is not used.
    assert french == [("envoie des paquets ICMP aux hôtes fping est un programme comme ping. Il envoie des "
                       "paquets à plusieurs hôtes.", "net"), ("jeu de backgammon", "games")]
    assert outside == ["bibliothèque foo Fichiers partagés."]

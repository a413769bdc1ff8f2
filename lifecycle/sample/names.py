"""Reference tables for the sample world: name locales, countries, phone formats, email domains.

Names are stored per locale as ``native`` spellings plus an ASCII romanization used to build
email addresses (and, for a share of CJK contacts, as the CRM spelling). No name contains a comma,
a double quote or a line break, so CSV rows never need quoting (checked in :func:`name_tables`).
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass
from functools import cache

import numpy as np

# Locale code -> (first names, last names). CJK entries are "native:romanization".
_LOCALES: dict[str, tuple[str, str]] = {
    "en": (
        "James Mary Michael Patricia Robert Jennifer John Linda David Elizabeth William Barbara "
        "Richard Susan Joseph Jessica Thomas Sarah Christopher Karen Daniel Lisa Matthew Nancy "
        "Anthony Ashley Mark Emily Olivia Liam Noah Emma Ava Sophia Ethan Chloe Grace Jack",
        "Smith Johnson Williams Brown Jones Miller Davis Wilson Taylor Anderson Thomas Moore "
        "Martin Jackson Thompson White Harris Clark Lewis Walker Hall Young King Wright Scott "
        "Green Baker Adams Nelson Hill Campbell Mitchell Roberts Carter Phillips Evans O'Brien "
        "O'Connor Murphy Kelly Hughes Cooper Ward Morgan Bennett",
    ),
    "de": (
        "Jürgen Jörg Günter Björn Lukas Maximilian Felix Jonas Leon Paul Sören Uwe Dieter "
        "Anna Lena Sophie Marie Hanna Lea Jana Käthe Ursula Heike Sabine Bärbel Maren",
        "Müller Schmidt Schneider Fischer Weber Meyer Wagner Becker Schulz Hoffmann Schäfer "
        "Koch Bauer Richter Klein Wolf Schröder Neumann Schwarz Zimmermann Braun Krüger "
        "Hofmann Hartmann Lange Weiß Groß Köhler Jäger Vogel",
    ),
    "fr": (
        "François Hélène Léa Zoé Chloé Benoît Jérôme Céline Amélie Anaïs Gaël Noël Raphaël "
        "Mathéo Théo Lucas Louis Hugo Camille Manon Inès Océane Élodie Séverine Stéphane",
        "Martin Bernard Dubois Thomas Robert Richard Petit Durand Leroy Moreau Simon Laurent "
        "Lefèvre Michel Garcia Faure Rousseau Mercier Girard Bonnet Lefebvre Fournier Rivière "
        "Gauthier Chevalier Brûlé Bérard Hébert Ménard",
    ),
    "es": (
        "José María Lucía Sofía Álvaro Andrés Iñaki Martín Paula Daniela Valentina Alejandro "
        "Hugo Pablo Sergio Jesús Ramón Begoña Inés Ángela Raúl Óscar Adrián Elena Marta",
        "García Martínez López Sánchez Pérez Gómez Martín Jiménez Ruiz Hernández Díaz Moreno "
        "Muñoz Álvarez Romero Alonso Gutiérrez Navarro Torres Domínguez Vázquez Ramos Gil "
        "Ramírez Serrano Blanco Suárez Molina Castro Ortiz Núñez Peña",
    ),
    "pt": (
        "João Maria José Ana Antônio Francisco Luíza Vitória Gabriel Lucas Matheus Beatriz "
        "Júlia Letícia Sebastião Conceição Caio Rafael Thiago Fernanda Larissa Mônica Inês",
        "Silva Santos Oliveira Souza Pereira Lima Carvalho Ferreira Rodrigues Almeida Costa "
        "Gomes Martins Araújo Melo Barbosa Ribeiro Alves Cardoso Rocha Gonçalves Magalhães "
        "Conceição Nascimento Brandão Simões Falcão",
    ),
    "it": (
        "Giulia Francesca Lorenzo Matteo Alessandro Chiara Sofia Leonardo Niccolò Nicolò "
        "Andrea Marco Giuseppe Giovanni Aurora Martina Federica Elisa Simone Davide Pietro",
        "Rossi Russo Ferrari Esposito Bianchi Romano Colombo Ricci Marino Greco Bruno Gallo "
        "Conti De Luca Mancini Costa Giordano Rizzo Lombardi Moretti Barbieri Fontana Santoro "
        "Mariani Rinaldi Caruso Ferrara Galli Martinelli Leone Longo Gentile Lo Russo",
    ),
    "nl": (
        "Daan Sem Bram Lucas Milan Levi Fleur Emma Julia Sanne Tess Noor Sophie Joost Bas "
        "Maarten Ruud Femke Lotte Anouk Ilse Thijs Koen Sjoerd",
        "de Jong Jansen de Vries van den Berg van Dijk Bakker Janssen Visser Smit Meijer "
        "de Boer Mulder de Groot Bos Vos Peters Hendriks van Leeuwen Dekker Brouwer",
    ),
    "sv": (
        "Åsa Björn Märta Håkan Sven Lars Anders Johan Erik Karin Ingrid Astrid Linnéa "
        "Maja Elsa Alice Oskar Nils Göran Stefan Åke Kerstin Mikael",
        "Andersson Johansson Karlsson Nilsson Eriksson Larsson Olsson Persson Svensson "
        "Gustafsson Pettersson Jonsson Jansson Hansson Lindqvist Öberg Åberg Lindström "
        "Bergström Söderberg Sjögren Nyström Holmström",
    ),
    "zh": (
        "伟:Wei 芳:Fang 娜:Na 秀英:Xiuying 敏:Min 静:Jing 丽:Li 强:Qiang 磊:Lei 军:Jun "
        "洋:Yang 勇:Yong 艳:Yan 杰:Jie 娟:Juan 涛:Tao 明:Ming 超:Chao 秀兰:Xiulan 霞:Xia "
        "平:Ping 刚:Gang 桂英:Guiying 晓明:Xiaoming 雪:Xue 欣怡:Xinyi 子涵:Zihan 浩然:Haoran "
        "宇轩:Yuxuan 梓涵:Zihan 思远:Siyuan 嘉怡:Jiayi",
        "王:Wang 李:Li 张:Zhang 刘:Liu 陈:Chen 杨:Yang 黄:Huang 赵:Zhao 吴:Wu 周:Zhou "
        "徐:Xu 孙:Sun 马:Ma 朱:Zhu 胡:Hu 郭:Guo 何:He 林:Lin 高:Gao 罗:Luo 郑:Zheng 梁:Liang "
        "谢:Xie 宋:Song 唐:Tang 许:Xu 韩:Han 冯:Feng 邓:Deng 曹:Cao 欧阳:Ouyang 司马:Sima",
    ),
    "ja": (
        "翔太:Shota 蓮:Ren 大翔:Hiroto 陽翔:Haruto 悠真:Yuma 結衣:Yui 陽菜:Hina 美咲:Misaki "
        "さくら:Sakura 葵:Aoi 花子:Hanako 太郎:Taro 健太:Kenta 直美:Naomi 由美子:Yumiko "
        "ゆい:Yui 拓海:Takumi 颯太:Sota 湊:Minato 凛:Rin 芽依:Mei 恵子:Keiko 誠:Makoto "
        "ひなた:Hinata 翼:Tsubasa 明美:Akemi",
        "佐藤:Sato 鈴木:Suzuki 高橋:Takahashi 田中:Tanaka 伊藤:Ito 渡辺:Watanabe 山本:Yamamoto "
        "中村:Nakamura 小林:Kobayashi 加藤:Kato 吉田:Yoshida 山田:Yamada 佐々木:Sasaki "
        "山口:Yamaguchi 松本:Matsumoto 井上:Inoue 木村:Kimura 林:Hayashi 斎藤:Saito 清水:Shimizu "
        "山崎:Yamazaki 森:Mori 池田:Ikeda 橋本:Hashimoto",
    ),
    "ko": (
        "민준:Minjun 서연:Seoyeon 지훈:Jihoon 지우:Jiwoo 하준:Hajun 서윤:Seoyun 도윤:Doyun "
        "민서:Minseo 예준:Yejun 하은:Haeun 수아:Sua 지민:Jimin 현우:Hyunwoo 지영:Jiyoung "
        "은지:Eunji 서준:Seojun 지호:Jiho 유진:Yujin 수빈:Subin 동현:Donghyun 혜진:Hyejin",
        "김:Kim 이:Lee 박:Park 최:Choi 정:Jung 강:Kang 조:Cho 윤:Yoon 장:Jang 임:Lim 한:Han "
        "오:Oh 서:Seo 신:Shin 권:Kwon 황:Hwang 안:Ahn 송:Song 류:Ryu 홍:Hong 남궁:Namgung",
    ),
}
CJK_LOCALES = ("zh", "ja", "ko")
LOCALES = tuple(_LOCALES)

# Multi-word Latin surnames are listed with their words joined by spaces in the source strings
# above; these are re-joined here so "de Vries" stays one surname.
_MULTIWORD = {
    "nl": ["de Jong", "de Vries", "van den Berg", "van Dijk", "de Boer", "de Groot", "van Leeuwen"],
    "it": ["De Luca", "Lo Russo"],
}

# Country -> (weight, {locale: probability}, calling code, national digits, eurozone)
COUNTRIES: dict[str, tuple[float, dict[str, float], str, int, bool]] = {
    "US": (
        0.36,
        {
            "en": 0.78,
            "es": 0.10,
            "zh": 0.04,
            "ko": 0.03,
            "ja": 0.02,
            "it": 0.01,
            "de": 0.01,
            "fr": 0.01,
        },
        "1",
        10,
        False,
    ),
    "GB": (
        0.09,
        {"en": 0.90, "fr": 0.02, "it": 0.02, "zh": 0.03, "ja": 0.01, "pt": 0.02},
        "44",
        10,
        False,
    ),
    "CA": (0.05, {"en": 0.70, "fr": 0.20, "zh": 0.06, "ko": 0.02, "es": 0.02}, "1", 10, False),
    "AU": (0.03, {"en": 0.85, "zh": 0.08, "ko": 0.03, "ja": 0.02, "it": 0.02}, "61", 9, False),
    "DE": (0.08, {"de": 0.92, "en": 0.03, "it": 0.02, "sv": 0.01, "nl": 0.02}, "49", 10, True),
    "FR": (0.06, {"fr": 0.93, "en": 0.02, "es": 0.02, "pt": 0.02, "it": 0.01}, "33", 9, True),
    "ES": (0.04, {"es": 0.95, "en": 0.02, "pt": 0.02, "fr": 0.01}, "34", 9, True),
    "IT": (0.04, {"it": 0.96, "en": 0.02, "fr": 0.01, "es": 0.01}, "39", 10, True),
    "NL": (0.02, {"nl": 0.92, "en": 0.04, "de": 0.04}, "31", 9, True),
    "SE": (0.02, {"sv": 0.94, "en": 0.03, "de": 0.03}, "46", 9, False),
    "BR": (0.04, {"pt": 0.95, "es": 0.02, "ja": 0.02, "it": 0.01}, "55", 11, False),
    "MX": (0.03, {"es": 0.97, "en": 0.03}, "52", 10, False),
    "JP": (0.06, {"ja": 0.97, "en": 0.02, "ko": 0.01}, "81", 10, False),
    "CN": (0.04, {"zh": 0.99, "en": 0.01}, "86", 11, False),
    "KR": (0.04, {"ko": 0.98, "en": 0.01, "zh": 0.01}, "82", 10, False),
}

# RFC 2606 / RFC 6761 reserved names: a sample address can never reach a real mailbox.
EMAIL_DOMAINS = (
    "example.com",
    "example.net",
    "example.org",
    "mail.example",
    "inbox.example",
    "post.example",
    "example.co.uk",
    "example.de",
    "example.jp",
    "example.fr",
)
EMAIL_DOMAIN_WEIGHTS = (0.24, 0.16, 0.12, 0.14, 0.1, 0.06, 0.05, 0.05, 0.04, 0.04)


@dataclass(frozen=True)
class NameTables:
    """Flat name tables: ``native``/``ascii`` spellings with per-locale offsets and counts."""

    first_native: tuple[str, ...]
    first_ascii: tuple[str, ...]
    last_native: tuple[str, ...]
    last_ascii: tuple[str, ...]
    first_offset: np.ndarray  # per locale
    first_count: np.ndarray
    last_offset: np.ndarray
    last_count: np.ndarray
    is_cjk: np.ndarray  # per locale


def ascii_fold(name: str) -> str:
    """Return a lower-case ASCII email token for a Latin-script name (accents stripped)."""
    special = {"ß": "ss", "ø": "o", "æ": "ae", "ł": "l", "đ": "d", "œ": "oe"}
    s = "".join(special.get(ch, ch) for ch in name.lower())
    s = unicodedata.normalize("NFKD", s)
    s = "".join(ch for ch in s if ch.isascii() and ch.isalnum())
    return s


def _split_names(locale: str, text: str) -> list[str]:
    """Return the names in a table string, keeping known multi-word surnames together."""
    for multi in _MULTIWORD.get(locale, []):
        text = text.replace(multi, multi.replace(" ", "\u00a0"))
    return [w.replace("\u00a0", " ") for w in text.split()]


@cache
def name_tables() -> NameTables:
    """Return the name tables (validated: no CSV/JSON special characters anywhere)."""
    fn: list[str] = []
    fa: list[str] = []
    ln: list[str] = []
    la: list[str] = []
    f_off, f_cnt, l_off, l_cnt, cjk = [], [], [], [], []
    for loc in LOCALES:
        firsts, lasts = _LOCALES[loc]
        for names, native, romans, off, cnt in (
            (firsts, fn, fa, f_off, f_cnt),
            (lasts, ln, la, l_off, l_cnt),
        ):
            off.append(len(native))
            items = _split_names(loc, names)
            for item in items:
                if loc in CJK_LOCALES:
                    nat, rom = item.split(":")
                    native.append(nat)
                    romans.append(rom)
                else:
                    native.append(item)
                    romans.append(item)
            cnt.append(len(items))
        cjk.append(loc in CJK_LOCALES)
    for s in fn + fa + ln + la:
        if any(c in s for c in ',"\\\n\r'):
            raise ValueError(f"name {s!r} contains a CSV/JSON special character")
    return NameTables(
        first_native=tuple(fn),
        first_ascii=tuple(fa),
        last_native=tuple(ln),
        last_ascii=tuple(la),
        first_offset=np.array(f_off, dtype=np.int64),
        first_count=np.array(f_cnt, dtype=np.int64),
        last_offset=np.array(l_off, dtype=np.int64),
        last_count=np.array(l_cnt, dtype=np.int64),
        is_cjk=np.array(cjk, dtype=bool),
    )


def country_arrays() -> tuple[
    tuple[str, ...], np.ndarray, np.ndarray, tuple[str, ...], np.ndarray, np.ndarray
]:
    """Return (codes, weights, locale cum-prob matrix, calling codes, national digits, euro)."""
    codes = tuple(COUNTRIES)
    weights = np.array([COUNTRIES[c][0] for c in codes], dtype=np.float64)
    weights /= weights.sum()
    mix = np.zeros((len(codes), len(LOCALES)))
    for i, c in enumerate(codes):
        for loc, p in COUNTRIES[c][1].items():
            mix[i, LOCALES.index(loc)] = p
    mix /= mix.sum(axis=1, keepdims=True)
    calling = tuple(COUNTRIES[c][2] for c in codes)
    digits = np.array([COUNTRIES[c][3] for c in codes], dtype=np.int64)
    euro = np.array([COUNTRIES[c][4] for c in codes], dtype=bool)
    return codes, weights, np.cumsum(mix, axis=1), calling, digits, euro

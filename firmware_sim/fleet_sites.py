"""The schools of ``alarmgw-sim fleet``: identities, keys and site data made from a seed, and
the command-center registry that accepts them.

The same seed gives the same schools, ids and keys, and a fleet of N is the first N schools
of any larger fleet with that seed (``alarm 7`` names the same school in both). Names and
addresses are Simplified Chinese, in Shenzhen's districts, with positions near the
district's centre, landline numbers in ``+86-755`` form and a contact person.
"""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass
from pathlib import Path

from gateway.contract.signing import SigningKey, load_signing_key, write_keypair

PREFIX = "schoolalarm/v1"

# district slug, name, centre (lat, lon), weight, neighbourhoods (name, pinyin syllables)
DISTRICTS: tuple[tuple[str, str, tuple[float, float], int, tuple[tuple[str, str], ...]], ...] = (
    (
        "futian",
        "福田区",
        (22.5410, 114.0550),
        2,
        (
            ("香蜜湖", "xiang mi hu"),
            ("景田", "jing tian"),
            ("莲花", "lian hua"),
            ("梅林", "mei lin"),
            ("园岭", "yuan ling"),
            ("沙头", "sha tou"),
            ("华富", "hua fu"),
            ("福保", "fu bao"),
            ("石厦", "shi xia"),
            ("皇岗", "huang gang"),
            ("上沙", "shang sha"),
            ("新洲", "xin zhou"),
            ("彩田", "cai tian"),
            ("益田", "yi tian"),
        ),
    ),
    (
        "luohu",
        "罗湖区",
        (22.5550, 114.1310),
        1,
        (
            ("翠竹", "cui zhu"),
            ("黄贝", "huang bei"),
            ("东门", "dong men"),
            ("笋岗", "sun gang"),
            ("莲塘", "lian tang"),
            ("清水河", "qing shui he"),
            ("桂园", "gui yuan"),
            ("东晓", "dong xiao"),
            ("布心", "bu xin"),
            ("螺岭", "luo ling"),
        ),
    ),
    (
        "nanshan",
        "南山区",
        (22.5330, 113.9300),
        2,
        (
            ("蛇口", "she kou"),
            ("南头", "nan tou"),
            ("桃源", "tao yuan"),
            ("西丽", "xi li"),
            ("粤海", "yue hai"),
            ("沙河", "sha he"),
            ("招商", "zhao shang"),
            ("前海", "qian hai"),
            ("大冲", "da chong"),
            ("后海", "hou hai"),
            ("留仙", "liu xian"),
            ("月亮湾", "yue liang wan"),
        ),
    ),
    (
        "baoan",
        "宝安区",
        (22.5950, 113.8900),
        3,
        (
            ("新安", "xin an"),
            ("西乡", "xi xiang"),
            ("福永", "fu yong"),
            ("沙井", "sha jing"),
            ("松岗", "song gang"),
            ("石岩", "shi yan"),
            ("航城", "hang cheng"),
            ("福海", "fu hai"),
            ("新桥", "xin qiao"),
            ("燕罗", "yan luo"),
            ("固戍", "gu shu"),
        ),
    ),
    (
        "longgang",
        "龙岗区",
        (22.7000, 114.2000),
        3,
        (
            ("布吉", "bu ji"),
            ("坂田", "ban tian"),
            ("横岗", "heng gang"),
            ("平湖", "ping hu"),
            ("龙城", "long cheng"),
            ("坪地", "ping di"),
            ("南湾", "nan wan"),
            ("吉华", "ji hua"),
            ("园山", "yuan shan"),
            ("宝龙", "bao long"),
        ),
    ),
    (
        "longhua",
        "龙华区",
        (22.6560, 114.0440),
        2,
        (
            ("民治", "min zhi"),
            ("大浪", "da lang"),
            ("观澜", "guan lan"),
            ("福城", "fu cheng"),
            ("观湖", "guan hu"),
            ("清湖", "qing hu"),
            ("上塘", "shang tang"),
            ("松和", "song he"),
        ),
    ),
    (
        "guangming",
        "光明区",
        (22.7480, 113.9360),
        1,
        (("公明", "gong ming"), ("凤凰", "feng huang"), ("马田", "ma tian"), ("玉塘", "yu tang")),
    ),
    (
        "pingshan",
        "坪山区",
        (22.6900, 114.3460),
        1,
        (("坑梓", "keng zi"), ("碧岭", "bi ling"), ("马峦", "ma luan"), ("龙田", "long tian")),
    ),
    (
        "yantian",
        "盐田区",
        (22.5580, 114.2360),
        1,
        (("沙头角", "sha tou jiao"), ("梅沙", "mei sha"), ("海山", "hai shan")),
    ),
)
SCHOOL_TYPES = (
    "小学",
    "小学",
    "中学",
    "实验学校",
    "外国语学校",
    "实验小学",
    "初级中学",
    "高级中学",
    "九年一贯制学校",
    "学校",
)
STREETS = ("路", "大道", "一路", "二路", "街", "中路", "北路", "南路")
GATES = ("南门岗亭", "北门岗亭", "东门岗亭", "西门岗亭", "正门门卫室")
SURNAMES = "王李张刘陈杨黄赵吴周徐孙马朱胡郭何林罗高郑梁谢宋唐许邓冯韩曹彭曾萧田董"
GIVEN = "伟芳娜敏静丽强磊军洋勇艳杰娟涛明超秀霞平刚桂英华建国志红文辉玲晓峰海燕"
ROLES = ("安全主任", "副校长", "保安队长", "总务主任")
CN_DIGITS = "零一二三四五六七八九"
JITTER_DEG = 0.03  # about 3 km around the district's centre


def cn_ordinal(n: int) -> str:
    """2 → 二, 11 → 十一, 23 → 二十三 (up to 99)."""
    tens, ones = divmod(n, 10)
    head = "" if tens == 0 else ("十" if tens == 1 else CN_DIGITS[tens] + "十")
    return head + (CN_DIGITS[ones] if ones else "")


@dataclass(frozen=True, slots=True)
class School:
    """One simulated site and its gateway."""

    index: int  # 1-based position in the fleet
    site: str
    gw: str
    school: str
    address: str
    lat: float
    lon: float
    phone: str
    contact: str
    gate: str  # where the alarm button is: the alarm's location name
    bollard: bool
    camera: bool
    key: SigningKey

    def registry_entry(self, public_key: str, heartbeat_s: float) -> str:
        """This school's ``[[gateways]]`` table (TOML; strings written as JSON strings, which
        TOML reads the same way)."""
        q = json.dumps
        return (
            f"[[gateways]]\nid = {q(self.gw)}\nsite = {q(self.site)}\n"
            f"public_keys = [{q(public_key)}]\nheartbeat_s = {heartbeat_s:g}\n"
            f"school = {q(self.school, ensure_ascii=False)}\n"
            f"address = {q(self.address, ensure_ascii=False)}\n"
            f"lat = {self.lat}\nlon = {self.lon}\nphone = {q(self.phone)}\n"
            f"contact = {q(self.contact, ensure_ascii=False)}\n"
        )


def gateway_key(seed: int, gw: str) -> SigningKey:
    """The gateway's Ed25519 key, derived from the seed and its id."""
    return SigningKey.from_seed(hashlib.sha256(f"alarmgw-fleet:{seed}:{gw}".encode()).digest())


def make_schools(count: int, seed: int) -> list[School]:
    """``count`` schools, the same for the same seed."""
    rng = random.Random(seed)
    weights = [d[3] for d in DISTRICTS]
    width = max(4, len(str(count)))
    used: dict[str, int] = {}
    out = []
    for index in range(1, count + 1):
        slug, district, (lat0, lon0), _w, places = rng.choices(DISTRICTS, weights)[0]
        place, pinyin = rng.choice(places)
        kind = rng.choice(SCHOOL_TYPES)
        base = f"{place}{kind}"
        used[base] = used.get(base, 0) + 1
        nth = used[base]
        name = base if nth == 1 else f"{place}第{cn_ordinal(nth)}{kind}"
        initials = "".join(word[0] for word in pinyin.split())
        number = f"{index:0{width}d}"
        site = f"sz-{slug}-{initials}-{number}"
        gw = f"gw-{number}-a"
        street = f"{place}{rng.choice(STREETS)}"
        address = f"深圳市{district}{street}{rng.randint(1, 399)}号"
        lat = round(lat0 + rng.uniform(-JITTER_DEG, JITTER_DEG), 6)
        lon = round(lon0 + rng.uniform(-JITTER_DEG, JITTER_DEG), 6)
        phone = f"+86-755-{rng.choice('2389')}{rng.randint(0, 999):03d}-{rng.randint(0, 9999):04d}"
        person = rng.choice(SURNAMES) + "".join(rng.choices(GIVEN, k=rng.choice((1, 2))))
        contact = f"{person}\uff08{rng.choice(ROLES)}\uff09"  # full-width brackets
        gate = rng.choice(GATES)
        bollard = rng.random() < 0.7
        camera = rng.random() < 0.9
        out.append(
            School(
                index=index,
                site=site,
                gw=gw,
                school=f"深圳市{district}{name}",
                address=address,
                lat=lat,
                lon=lon,
                phone=phone,
                contact=contact,
                gate=gate,
                bollard=bollard,
                camera=camera,
                key=gateway_key(seed, gw),
            )
        )
    return out


def center_signing_key(out: Path) -> SigningKey:
    """The center's key in ``out/keys``: made once, kept across runs."""
    key_path = out / "keys" / "center.key"
    if key_path.exists():
        return load_signing_key(key_path)
    key, _, _ = write_keypair(out / "keys", "center")
    return key


def gateway_tables(out: Path, schools: list[School], heartbeat_s: float) -> str:
    """The ``[[gateways]]`` tables of ``schools``, their public keys written to ``out/keys``
    (paths relative to a center.toml in ``out``)."""
    keys = out / "keys"
    keys.mkdir(parents=True, exist_ok=True)
    parts = []
    for school in schools:
        pub = keys / f"{school.gw}.pub"
        pem = school.key.public_pem()
        if not pub.exists() or pub.read_bytes() != pem:
            pub.write_bytes(pem)
        parts.append(school.registry_entry(f"keys/{school.gw}.pub", heartbeat_s))
    return "\n".join(parts)


def write_registry(
    out: Path,
    schools: list[School],
    *,
    host: str,
    port: int,
    heartbeat_s: float,
    prefix: str = PREFIX,
    extra: str = "",
) -> Path:
    """``out/center.toml`` with every school in ``[[gateways]]``, their public keys in
    ``out/keys/``, the center's key pair (made once) and ``out/state/center``; the path of
    center.toml. ``extra``: more TOML to append (e.g. a ``[console]`` table)."""
    (out / "state" / "center").mkdir(parents=True, exist_ok=True, mode=0o700)
    center_signing_key(out)
    head = (
        "# written by alarmgw-sim fleet\n"
        '[center]\nkey_file = "keys/center.key"\nstate_dir = "state/center"\n\n'
        f"[mqtt]\nhost = {json.dumps(host)}\nport = {port}\nprefix = {json.dumps(prefix)}\n\n"
        '[health]\nlisten = "127.0.0.1:0"\n'
    )
    toml = out / "center.toml"
    text = "\n".join(p for p in (head, gateway_tables(out, schools, heartbeat_s), extra) if p)
    toml.write_text(text, encoding="utf-8")
    return toml

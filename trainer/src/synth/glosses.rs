//! The synthetic vocabulary: each gloss is a distinct combination of handshape,
//! location, movement and hands. At least a third of the glosses come in
//! pairs that share everything but the direction of their movement — one is
//! the other played backwards — so no single frame can tell them apart.

use rand::seq::SliceRandom;
use rand::Rng;
use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Handshape {
    Fist,
    Flat,
    Point,
    V,
    Open,
}

pub const HANDSHAPES: [Handshape; 5] = [
    Handshape::Fist,
    Handshape::Flat,
    Handshape::Point,
    Handshape::V,
    Handshape::Open,
];

/// Where the dominant hand works, in body coordinates (x to the signer's
/// dominant side, y down; the unit is the torso width).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Location {
    Forehead,
    Chin,
    Chest,
    Stomach,
    Shoulder,
    Neutral,
}

pub const LOCATIONS: [Location; 6] = [
    Location::Forehead,
    Location::Chin,
    Location::Chest,
    Location::Stomach,
    Location::Shoulder,
    Location::Neutral,
];

impl Location {
    /// Anchor in body units relative to the neck base.
    pub fn anchor(self) -> (f32, f32) {
        match self {
            Location::Forehead => (0.05, -0.62),
            Location::Chin => (0.05, -0.28),
            Location::Chest => (0.08, 0.25),
            Location::Stomach => (0.05, 0.62),
            Location::Shoulder => (0.45, 0.08),
            Location::Neutral => (0.55, 0.45),
        }
    }
}

/// Movement paths; `Rev(m)` is `m` played backwards.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Movement {
    Up,
    Down,
    Outward,
    Inward,
    CircleCw,
    CircleCcw,
    Tap,
    Zigzag,
    Arc,
}

/// The directional movements that come in time-reversed pairs.
pub const PAIRS: [(Movement, Movement); 3] = [
    (Movement::Up, Movement::Down),
    (Movement::Outward, Movement::Inward),
    (Movement::CircleCw, Movement::CircleCcw),
];

/// Movements without a partner.
pub const SINGLES: [Movement; 3] = [Movement::Tap, Movement::Zigzag, Movement::Arc];

impl Movement {
    /// Offset from the anchor at phase t in [0, 1], in body units.
    pub fn offset(self, t: f32, amp: f32) -> (f32, f32) {
        use std::f32::consts::TAU;
        let a = amp;
        match self {
            Movement::Up => (0.0, a * (0.5 - t)),
            Movement::Down => Movement::Up.offset(1.0 - t, amp),
            Movement::Outward => (a * (t - 0.5), 0.0),
            Movement::Inward => Movement::Outward.offset(1.0 - t, amp),
            Movement::CircleCw => {
                let th = -TAU * t;
                (0.45 * a * th.cos(), 0.45 * a * th.sin())
            }
            Movement::CircleCcw => Movement::CircleCw.offset(1.0 - t, amp),
            // palindromic: two taps towards the body
            Movement::Tap => (0.0, 0.3 * a * (TAU * t).sin().abs()),
            Movement::Zigzag => {
                let tri = 1.0 - ((3.0 * t).fract() * 2.0 - 1.0).abs();
                (a * (t - 0.5), 0.3 * a * (tri - 0.5))
            }
            Movement::Arc => {
                let th = std::f32::consts::PI * t;
                (0.5 * a * th.cos(), -0.4 * a * th.sin())
            }
        }
    }
}

/// One or two hands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Hands {
    /// Dominant hand only; the other rests.
    One,
    /// Both hands, mirrored.
    Mirrored,
    /// The other hand is a flat, still base in front of the chest.
    Base,
}

pub const HANDS: [Hands; 3] = [Hands::One, Hands::Mirrored, Hands::Base];

/// A gloss of the synthetic sign language.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GlossSpec {
    pub name: String,
    pub handshape: Handshape,
    pub location: Location,
    pub movement: Movement,
    pub hands: Hands,
    /// Index of the gloss that differs from this one only by its movement's direction.
    pub pair_of: Option<usize>,
}

const WORDS: &[&str] = &[
    "HOUSE", "RAIN", "TOMORROW", "SUN", "WIND", "SNOW", "COLD", "WARM", "CLOUD", "NORTH", "SOUTH",
    "EAST", "WEST", "MORNING", "EVENING", "NIGHT", "TODAY", "WEEK", "MONTH", "YEAR", "STORM",
    "FOG", "ICE", "HOT", "FRIEND", "FAMILY", "MOTHER", "FATHER", "CHILD", "SCHOOL", "WORK", "HOME",
    "CITY", "RIVER", "MOUNTAIN", "SEA", "ROAD", "TRAIN", "CAR", "BOOK", "WATER", "BREAD", "APPLE",
    "COFFEE", "TEA", "MILK", "FISH", "BIRD", "DOG", "CAT", "HORSE", "TREE", "FLOWER", "GARDEN",
    "DOOR", "WINDOW", "TABLE", "CHAIR", "BED", "LIGHT", "DARK", "BIG", "SMALL", "FAST", "SLOW",
    "GOOD", "BAD", "NEW", "OLD", "YES", "NO", "PLEASE", "THANKS", "HELLO", "GOODBYE", "HELP",
    "LEARN", "TEACH", "READ", "WRITE", "SEE", "HEAR", "SPEAK", "SIGN", "KNOW", "THINK", "WANT",
    "NEED", "LIKE", "LOVE", "GIVE", "TAKE", "COME", "GO", "STAY", "WAIT", "OPEN", "CLOSE", "BUY",
    "SELL", "PAY", "MONEY", "DOCTOR", "SICK", "HAPPY", "SAD", "TIRED", "HUNGRY", "MUSIC", "PLAY",
    "GAME", "SPORT", "SWIM", "RUN", "WALK", "SLEEP", "EAT", "DRINK", "COOK", "WASH", "CLEAN",
    "PHONE",
];

/// The most glosses [`vocabulary`] can make distinct.
pub fn max_glosses() -> usize {
    // pairs need a (handshape, location, hands) base each: 5*6*3 = 90 bases
    // with 3 pair kinds and 3 singles -> far more than we name; cap for sanity
    400
}

fn name(i: usize) -> String {
    if i < WORDS.len() {
        WORDS[i].to_string()
    } else {
        format!("{}{}", WORDS[i % WORDS.len()], i / WORDS.len() + 1)
    }
}

/// Builds `v` distinct glosses; ⌈v/3⌉ rounded up to an even number of them
/// are time-reversed pairs.
pub fn vocabulary<R: Rng>(v: usize, rng: &mut R) -> Vec<GlossSpec> {
    let mut bases: Vec<(Handshape, Location, Hands)> = Vec::new();
    for h in HANDSHAPES {
        for l in LOCATIONS {
            for hs in HANDS {
                bases.push((h, l, hs));
            }
        }
    }
    // one-handed bases first: they are the easiest to see
    bases.shuffle(rng);
    bases.sort_by_key(|b| b.2 != Hands::One);
    let mut combos: Vec<(Handshape, Location, Movement, Hands)> = Vec::new();
    for pass in 0.. {
        for (i, &(h, l, hs)) in bases.iter().enumerate() {
            let m = match pass {
                0 => PAIRS[i % 3].0,
                1 => SINGLES[i % 3],
                2 => PAIRS[(i + 1) % 3].0,
                3 => SINGLES[(i + 1) % 3],
                4 => PAIRS[(i + 2) % 3].0,
                _ => SINGLES[(i + 2) % 3],
            };
            combos.push((h, l, m, hs));
        }
        if pass == 5 {
            break;
        }
    }
    let n_pairs = v.div_ceil(3).div_ceil(2).min(v / 2);
    let mut out: Vec<GlossSpec> = Vec::with_capacity(v);
    let pair_combos = combos.iter().filter(|c| PAIRS.iter().any(|p| p.0 == c.2));
    for &(h, l, m, hs) in pair_combos.take(n_pairs) {
        let rev = PAIRS.iter().find(|p| p.0 == m).map(|p| p.1).unwrap_or(m);
        let a = out.len();
        out.push(GlossSpec {
            name: String::new(),
            handshape: h,
            location: l,
            movement: m,
            hands: hs,
            pair_of: Some(a + 1),
        });
        out.push(GlossSpec {
            name: String::new(),
            handshape: h,
            location: l,
            movement: rev,
            hands: hs,
            pair_of: Some(a),
        });
    }
    let used: Vec<(Handshape, Location, Hands)> = out
        .iter()
        .map(|g| (g.handshape, g.location, g.hands))
        .collect();
    // singles: a non-directional movement, preferring bases not used by a pair
    let mut singles: Vec<_> = combos
        .iter()
        .filter(|c| SINGLES.contains(&c.2))
        .copied()
        .collect();
    singles.sort_by_key(|c| used.contains(&(c.0, c.1, c.3)));
    for &(h, l, m, hs) in singles.iter().take(v - out.len()) {
        out.push(GlossSpec {
            name: String::new(),
            handshape: h,
            location: l,
            movement: m,
            hands: hs,
            pair_of: None,
        });
    }
    // names in a shuffled order so pairs do not get neighbouring words
    let mut names: Vec<usize> = (0..out.len()).collect();
    names.shuffle(rng);
    for (g, n) in out.iter_mut().zip(names) {
        g.name = name(n);
    }
    out
}

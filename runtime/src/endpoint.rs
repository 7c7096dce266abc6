//! Endpointing: has the signer finished a sentence? sherpa-onnx's three rules,
//! applied to the committed stream (frames whose posteriors are final):
//!
//! 1. rest this long ends an utterance even if nothing was signed in it (the
//!    stream starts afresh; no sentence is reported);
//! 2. rest this long after signing ends the sentence;
//! 3. an utterance this long ends, signing or not.
//!
//! *Rest* is the run of committed frames since the last keyframe whose most
//! probable label is a gloss ([`crate::stream::Stream::last_sign_frame`]), so
//! the rules do not depend on the decoder or the beam width.

use serde::Serialize;

/// The three rules' durations, in seconds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EndpointConfig {
    /// Rule 1: rest that ends an utterance in which nothing was signed.
    pub rest_without_sign: f32,
    /// Rule 2: rest after signing that ends the sentence.
    pub rest_after_sign: f32,
    /// Rule 3: the longest utterance.
    pub max_utterance: f32,
}

impl Default for EndpointConfig {
    /// sherpa-onnx's rules 1 and 3. Rule 2 is shorter than sherpa's 1.2 s:
    /// a signer's hands come down between sentences, so rest starts later
    /// than trailing silence does, and with sherpa's value many short pauses
    /// between sentences were missed on the synthetic corpus while none of its
    /// sentences was cut (docs/BENCHMARKS.md, "Endpointing").
    fn default() -> Self {
        Self {
            rest_without_sign: 2.4,
            rest_after_sign: 0.8,
            max_utterance: 20.0,
        }
    }
}

/// Which rule ended an utterance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EndpointRule {
    /// Rule 1.
    RestWithoutSign,
    /// Rule 2.
    RestAfterSign,
    /// Rule 3.
    MaxUtterance,
    /// Not a rule: the stream ended with a sentence pending.
    EndOfStream,
}

/// Why a configuration cannot be used.
#[derive(Debug, thiserror::Error, PartialEq)]
#[error("endpoint rule {field}: {value} s is not a duration between 0.04 and {max} s")]
pub struct EndpointConfigError {
    pub field: &'static str,
    pub value: f32,
    pub max: f32,
}

/// The longest utterance rule 3 may allow: a sentence's glosses are kept until
/// it ends, so it must end.
pub const MAX_UTTERANCE_LIMIT: f32 = 600.0;

impl EndpointConfig {
    /// Refuses durations that are not positive, not finite, or (rule 3) above
    /// [`MAX_UTTERANCE_LIMIT`].
    pub fn validate(&self) -> Result<(), EndpointConfigError> {
        for (field, value, max) in [
            (
                "rest_without_sign",
                self.rest_without_sign,
                MAX_UTTERANCE_LIMIT,
            ),
            ("rest_after_sign", self.rest_after_sign, MAX_UTTERANCE_LIMIT),
            ("max_utterance", self.max_utterance, MAX_UTTERANCE_LIMIT),
        ] {
            if !(0.04..=max).contains(&value) {
                return Err(EndpointConfigError { field, value, max });
            }
        }
        Ok(())
    }

    /// The rule that ends the utterance now, if any: `committed` frames of it
    /// are final, the last of them with signing at `last_sign` (both counted
    /// from the utterance's first frame), at `fps` frames per second.
    pub fn check(&self, committed: u64, last_sign: Option<u64>, fps: f32) -> Option<EndpointRule> {
        let frames = |secs: f32| (secs * fps).ceil().max(1.0) as u64;
        let rest = committed.saturating_sub(last_sign.map_or(0, |f| f + 1));
        match last_sign {
            Some(_) if rest >= frames(self.rest_after_sign) => Some(EndpointRule::RestAfterSign),
            None if rest >= frames(self.rest_without_sign) => Some(EndpointRule::RestWithoutSign),
            _ if committed >= frames(self.max_utterance) => Some(EndpointRule::MaxUtterance),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Against a frame-by-frame reading of the rules: walk a label sequence
    /// (true = signing) one committed frame at a time and stop where each rule
    /// first holds, counted by hand.
    #[test]
    fn rules_fire_where_a_hand_count_says() {
        let c = EndpointConfig {
            rest_without_sign: 0.4, // 10 frames at 25 fps
            rest_after_sign: 0.2,   // 5 frames
            max_utterance: 2.0,     // 50 frames
        };
        let first = |signing: &dyn Fn(u64) -> bool| {
            let mut last = None;
            for n in 1..=200u64 {
                if signing(n - 1) {
                    last = Some(n - 1);
                }
                if let Some(r) = c.check(n, last, 25.0) {
                    return Some((n, r));
                }
            }
            None
        };
        // all rest: rule 1 after 10 frames
        assert_eq!(first(&|_| false), Some((10, EndpointRule::RestWithoutSign)));
        // signing on frames 3..8, then rest: 5 frames of rest after frame 7
        assert_eq!(
            first(&|f| (3..8).contains(&f)),
            Some((13, EndpointRule::RestAfterSign))
        );
        // signing with gaps of 4 rest frames: never rule 2, rule 3 at 50
        assert_eq!(
            first(&|f| f % 5 == 0),
            Some((50, EndpointRule::MaxUtterance))
        );
        // rest of 9 frames, then signing: rule 1 never fires
        assert_eq!(
            first(&|f| (9..12).contains(&f)),
            Some((17, EndpointRule::RestAfterSign))
        );
    }

    #[test]
    fn bad_durations_are_refused_by_name() {
        let mut c = EndpointConfig::default();
        assert!(c.validate().is_ok());
        c.rest_after_sign = 0.0;
        assert_eq!(c.validate().unwrap_err().field, "rest_after_sign");
        c = EndpointConfig {
            max_utterance: f32::INFINITY,
            ..EndpointConfig::default()
        };
        assert_eq!(c.validate().unwrap_err().field, "max_utterance");
        c.max_utterance = f32::NAN;
        assert!(c.validate().is_err());
    }
}

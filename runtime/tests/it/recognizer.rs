//! The push API and endpointing on the shipped default model and samples.
//! Oracles: `Pipeline::run` over the same frames (a second driver of the same
//! steps), and each clip decoded on its own.

use signrt_runtime::endpoint::{EndpointConfig, EndpointRule};
use signrt_runtime::pipeline::{Event, Pipeline, RunOptions, SentenceEvent, Settings};
use signrt_runtime::recognizer::{FrameRef, OwnedEvent, Recognizer, RecognizerOptions};
use signrt_runtime::source::{Frame, FrameSource, MemorySource, Y4mSource};
use signrt_runtime::Bundle;
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn sample(name: &str) -> Vec<Frame> {
    let mut src = Y4mSource::open_file(&root().join("models/samples").join(name)).unwrap();
    let mut out = vec![];
    let mut f = Frame::default();
    while src.next_frame(&mut f).unwrap() {
        out.push(f.clone());
    }
    out
}

/// Clip A, `rest` copies of its last frame (the signer holds still), clip B.
fn two_sentences(rest: usize) -> (Vec<Frame>, usize) {
    let mut a = sample("s14_v00360.y4m");
    let b = sample("s15_v00365.y4m");
    let split = a.len();
    let still = a.last().unwrap().clone();
    a.extend(std::iter::repeat_n(still, rest));
    a.extend(b);
    (a, split)
}

/// Glosses and sentences of a `Pipeline::run` over `frames`.
fn run_pipeline(
    frames: &[Frame],
    endpoint: Option<EndpointConfig>,
) -> (Vec<String>, Vec<SentenceEvent>) {
    run_threads(frames, endpoint, 1)
}

fn run_threads(
    frames: &[Frame],
    endpoint: Option<EndpointConfig>,
    threads: usize,
) -> (Vec<String>, Vec<SentenceEvent>) {
    let bundle = Bundle::open(&root().join("models/demo")).unwrap();
    let settings = Settings {
        beam: 5,
        endpoint,
        threads,
        ..Settings::default()
    };
    let mut pipe = Pipeline::with_settings(&bundle, settings).unwrap();
    let mut src = MemorySource::new(frames.to_vec(), frames.len(), 25.0);
    let opts = RunOptions {
        fps: 25.0,
        memory_budget: None,
    };
    let (mut glosses, mut sentences) = (vec![], vec![]);
    pipe.run_events(&mut src, &opts, |e| match e {
        Event::Gloss(g) => glosses.push(g.gloss.clone()),
        Event::Sentence(s) => sentences.push(s.clone()),
        Event::Reset(_) | Event::Partial(_) => {}
    })
    .unwrap();
    (glosses, sentences)
}

fn glosses_of(frames: &[Frame]) -> String {
    run_pipeline(frames, None).0.join(" ")
}

/// Pushing frames one at a time gives what `Pipeline::run` gives, event for
/// event, with and without endpointing; the caller's decode rhythm does not matter.
#[test]
fn pushed_frames_give_the_pipelines_events() {
    let (frames, _) = two_sentences(60);
    for endpoint in [None, Some(EndpointConfig::default())] {
        let (want_glosses, want_sentences) = run_pipeline(&frames, endpoint);
        let opts = RecognizerOptions {
            endpoint,
            ..RecognizerOptions::default()
        };
        let rec = Recognizer::new(&root().join("models/demo"), opts).unwrap();
        let mut s = rec.create_stream().unwrap();
        let mut events = vec![];
        for (i, f) in frames.iter().enumerate() {
            s.accept_frame(&FrameRef::rgb(&f.rgb, f.width, f.height))
                .unwrap();
            // decode every third frame only: accept_frame keeps the queue bounded
            while i % 3 == 0 && s.is_ready() {
                s.decode().unwrap();
            }
            events.extend(s.take_events());
        }
        s.input_finished();
        while s.is_ready() {
            s.decode().unwrap();
        }
        events.extend(s.take_events());
        let glosses: Vec<String> = events
            .iter()
            .filter_map(|e| match e {
                OwnedEvent::Gloss(g) => Some(g.gloss.clone()),
                _ => None,
            })
            .collect();
        let sentences: Vec<SentenceEvent> = events
            .iter()
            .filter_map(|e| match e {
                OwnedEvent::Sentence(s) => Some(s.clone()),
                _ => None,
            })
            .collect();
        assert_eq!(glosses, want_glosses, "endpoint {endpoint:?}");
        assert_eq!(sentences, want_sentences, "endpoint {endpoint:?}");
        assert_eq!(s.frames_decoded(), frames.len() as u64);
    }
}

/// Two clips with the signer at rest between them: two sentences, split in
/// the rest, each with the glosses its clip has on its own; the recurrent
/// state starts afresh, so the second owes nothing to the first.
#[test]
fn a_rest_between_clips_ends_a_sentence() {
    let (frames, split) = two_sentences(60);
    let (_, sentences) = run_pipeline(&frames, Some(EndpointConfig::default()));
    assert_eq!(sentences.len(), 2, "{sentences:#?}");
    let (a, b) = (&sentences[0], &sentences[1]);
    assert_eq!(a.endpoint, EndpointRule::RestAfterSign);
    assert_eq!(b.endpoint, EndpointRule::EndOfStream);
    assert_eq!(a.start_frame, 0);
    assert!(
        a.end_frame as usize >= split && (a.end_frame as usize) < split + 60,
        "{a:?}"
    );
    assert_eq!(b.start_frame, a.end_frame + 1);
    assert_eq!(b.end_frame as usize, frames.len() - 1);
    // each sentence's keyframes and scores cover its own frames, in the
    // stream's frame numbers
    for s in [a, b] {
        let k = &s.keyframes;
        assert_eq!(k.frame_scores_start, s.start_frame);
        assert_eq!(k.frame_scores.len() as u64, s.end_frame - s.start_frame + 1);
        assert!(!k.keyframe_indices.is_empty());
        assert!(k
            .keyframe_indices
            .iter()
            .all(|f| (s.start_frame..=s.end_frame).contains(f)));
    }
    assert_eq!(a.glosses, glosses_of(&frames[..split]));
    assert_eq!(b.glosses, glosses_of(&frames[split + 60..]));
    // without endpointing the same stream is one run of glosses
    assert!(run_pipeline(&frames, None).1.is_empty());
}

/// Endpoints are decided as the stream takes each frame, so encoder threads
/// (which hand features over in bursts) do not move them.
#[test]
fn endpoints_do_not_depend_on_threads() {
    let (frames, _) = two_sentences(60);
    let e = Some(EndpointConfig::default());
    let one = run_threads(&frames, e, 1);
    assert_eq!(one.1.len(), 2);
    assert_eq!(run_threads(&frames, e, 3), one);
}

/// Partial results change no final output; they name glosses before these
/// become final, never frames the stream has not had, and end empty.
#[test]
fn partials_lead_the_final_glosses() {
    let (frames, _) = two_sentences(60);
    let e = Some(EndpointConfig::default());
    let opts = RecognizerOptions {
        endpoint: e,
        partials: true,
        ..RecognizerOptions::default()
    };
    let rec = Recognizer::new(&root().join("models/demo"), opts).unwrap();
    let mut s = rec.create_stream().unwrap();
    for f in &frames {
        s.accept_frame(&FrameRef::rgb(&f.rgb, f.width, f.height))
            .unwrap();
    }
    s.input_finished();
    while s.is_ready() {
        s.decode().unwrap();
    }
    let events = s.take_events();
    let finals: Vec<String> = events
        .iter()
        .filter_map(|e| match e {
            OwnedEvent::Gloss(g) => Some(g.gloss.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(
        finals,
        run_pipeline(&frames, e).0,
        "partials changed the glosses"
    );
    let mut led = 0;
    let mut seen: Vec<(u32, u64, u64)> = vec![];
    let mut last_partial = None;
    for e in &events {
        match e {
            OwnedEvent::Partial(p) => {
                for g in &p.spans {
                    assert!(
                        g.start_frame <= g.end_frame && g.end_frame <= p.frame,
                        "{p:?}"
                    );
                    seen.push((g.id, g.start_frame, g.end_frame));
                }
                last_partial = Some(p.glosses.clone());
            }
            OwnedEvent::Gloss(g) => {
                led += usize::from(
                    seen.iter()
                        .any(|&(id, a, b)| id == g.id && a <= g.end_frame && b >= g.start_frame),
                );
            }
            _ => {}
        }
    }
    assert_eq!(
        last_partial.as_deref(),
        Some(""),
        "pending glosses left at the end"
    );
    assert!(
        2 * led > finals.len(),
        "only {led} of {} finals had a partial first",
        finals.len()
    );
}

/// The push API's result and endpoint flag, as an application reads them.
#[test]
fn result_and_endpoint_follow_the_sentence() {
    let (frames, _) = two_sentences(60);
    let rec = Recognizer::new(&root().join("models/demo"), RecognizerOptions::default()).unwrap();
    let mut s = rec.create_stream().unwrap();
    let mut said = vec![];
    for f in &frames {
        s.accept_frame(&FrameRef::rgb(&f.rgb, f.width, f.height))
            .unwrap();
        while s.is_ready() {
            s.decode().unwrap();
        }
        if s.is_endpoint() {
            let r = s.result();
            assert!(r.is_endpoint);
            said.push(r.text);
            s.reset().unwrap();
            assert!(!s.is_endpoint() && s.result().text.is_empty());
        }
    }
    s.input_finished();
    assert!(s
        .accept_frame(&FrameRef::rgb(&frames[0].rgb, 64, 64))
        .is_err());
    while s.is_ready() {
        s.decode().unwrap();
    }
    assert!(s.is_endpoint());
    said.push(s.result().text);
    let (_, sentences) = run_pipeline(&frames, Some(EndpointConfig::default()));
    let want: Vec<String> = sentences.into_iter().map(|s| s.glosses).collect();
    assert_eq!(said, want);
    // a reset after the end takes frames again
    s.reset().unwrap();
    s.accept_frame(&FrameRef::rgb(&frames[0].rgb, 64, 64))
        .unwrap();
}

/// Two streams of one recogniser share its model, not their state: fed two
/// clips frame by frame in turn, each gives its own clip's glosses.
#[test]
fn streams_of_one_recognizer_are_independent() {
    let opts = RecognizerOptions {
        endpoint: None,
        ..RecognizerOptions::default()
    };
    let rec = Recognizer::new(&root().join("models/demo"), opts).unwrap();
    let clips = [sample("s14_v00360.y4m"), sample("s15_v00365.y4m")];
    let mut streams = [rec.create_stream().unwrap(), rec.create_stream().unwrap()];
    let longest = clips.iter().map(Vec::len).max().unwrap();
    for i in 0..longest {
        for (s, c) in streams.iter_mut().zip(&clips) {
            if let Some(f) = c.get(i) {
                s.accept_frame(&FrameRef::rgb(&f.rgb, f.width, f.height))
                    .unwrap();
                while s.is_ready() {
                    s.decode().unwrap();
                }
            }
        }
    }
    for (s, c) in streams.iter_mut().zip(&clips) {
        s.input_finished();
        while s.is_ready() {
            s.decode().unwrap();
        }
        assert_eq!(s.result().text, glosses_of(c));
    }
}

#[test]
fn bad_options_and_frames_are_refused_by_name() {
    let dir = root().join("models/demo");
    let bad = |o: RecognizerOptions| Recognizer::new(&dir, o).err().unwrap().to_string();
    let d = RecognizerOptions::default();
    assert!(bad(RecognizerOptions { beam: 0, ..d }).contains("beam"));
    assert!(bad(RecognizerOptions { fps: f32::NAN, ..d }).contains("fps"));
    let e = EndpointConfig {
        max_utterance: 0.0,
        ..EndpointConfig::default()
    };
    let msg = bad(RecognizerOptions {
        endpoint: Some(e),
        ..d
    });
    assert!(msg.contains("max_utterance"), "{msg}");
    let msg = Recognizer::new(Path::new("/nonexistent/bundle"), d)
        .err()
        .unwrap()
        .to_string();
    assert!(msg.contains("/nonexistent/bundle"), "{msg}");
    let rec = Recognizer::new(&dir, d).unwrap();
    let mut s = rec.create_stream().unwrap();
    let f = sample("s15_v00365.y4m").remove(0);
    s.accept_frame(&FrameRef::rgb(&f.rgb, 64, 64)).unwrap();
    let msg = s
        .accept_frame(&FrameRef::rgb(&f.rgb[..100], 64, 64))
        .unwrap_err()
        .to_string();
    assert!(
        msg.starts_with("frame 1:") && msg.contains("plane 0"),
        "{msg}"
    );
}

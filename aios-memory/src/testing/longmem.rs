//! A synthetic long-conversation data set shaped like LongMemEval: many timestamped chat
//! sessions between a user and an assistant, with facts planted among filler turns, and
//! questions of five kinds whose evidence turns are known.
//!
//! - single-fact: one planted fact answers the question;
//! - multi-session: the answer gathers facts from several sessions;
//! - temporal: the answer depends on when things happened (which came first);
//! - knowledge-update: a fact is stated, then changed in a later session; the latest wins;
//! - abstention: the question is about something never mentioned (no evidence).
//!
//! ```
//! use aios_memory::testing::longmem::{generate, LongMemConfig, QuestionKind};
//! let set = generate(&LongMemConfig::default());
//! assert!(set.turns.len() > 100);
//! assert!(set.questions.iter().any(|q| q.kind == QuestionKind::Abstention && q.evidence.is_empty()));
//! ```

use std::time::Duration;

use aios_core::{SeededRng, Timestamp};

/// The shape of the generated set.
#[derive(Debug, Clone)]
pub struct LongMemConfig {
    /// Chat sessions.
    pub sessions: usize,
    /// Filler turns per session (facts come on top).
    pub filler_per_session: usize,
    /// Questions of each answerable kind (abstention questions: half as many).
    pub questions_per_kind: usize,
    /// Distractor turns per person named in a fact: the same name in unrelated chatter that
    /// mentions other animals, places and hobbies.
    pub distractors_per_name: usize,
    /// The seed of every choice.
    pub seed: u64,
    /// When the first session starts.
    pub start: Timestamp,
    /// Time between sessions.
    pub session_gap: Duration,
}

impl Default for LongMemConfig {
    fn default() -> Self {
        Self {
            sessions: 50,
            filler_per_session: 16,
            questions_per_kind: 12,
            distractors_per_name: 2,
            seed: 7,
            start: Timestamp::from_timestamp_millis(1_767_225_600_000).unwrap_or_default(),
            session_gap: Duration::from_secs(26 * 3600),
        }
    }
}

/// One chat turn.
#[derive(Debug, Clone, PartialEq)]
pub struct Turn {
    /// The session it belongs to.
    pub session: usize,
    /// When it was said.
    pub at: Timestamp,
    /// `user` or `assistant`.
    pub speaker: &'static str,
    /// What was said.
    pub text: String,
    /// For a knowledge update: the turn (index) whose fact this one replaces.
    pub updates: Option<usize>,
}

/// The kind of a question.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum QuestionKind {
    /// One fact answers it.
    SingleFact,
    /// Facts from several sessions answer it.
    MultiSession,
    /// The order of events answers it.
    Temporal,
    /// The latest of several versions of a fact answers it.
    KnowledgeUpdate,
    /// Nothing in the conversation answers it.
    Abstention,
}

/// A question with its known evidence.
#[derive(Debug, Clone, PartialEq)]
pub struct Question {
    /// Its kind.
    pub kind: QuestionKind,
    /// The question text.
    pub text: String,
    /// The turns (indices into [`LongMemSet::turns`]) that answer it; empty for abstention.
    pub evidence: Vec<usize>,
    /// The expected answer (`None` for abstention).
    pub answer: Option<String>,
}

/// A generated conversation and its questions.
#[derive(Debug, Clone, PartialEq)]
pub struct LongMemSet {
    /// Every turn, in time order.
    pub turns: Vec<Turn>,
    /// The questions.
    pub questions: Vec<Question>,
}

const SYLLABLES: &[&str] = &[
    "ka", "lo", "mi", "ren", "sa", "tu", "vi", "zor", "bel", "dan", "fi", "gor", "ha", "jun", "ke",
    "lys", "mor", "nel", "pa", "quin", "ro", "sol", "ta", "ul", "ve", "wyn", "xa", "yo",
];
const CITIES: &[&str] = &[
    "lisbon",
    "oslo",
    "kyoto",
    "valparaiso",
    "tbilisi",
    "reykjavik",
    "porto",
    "ljubljana",
    "hobart",
    "cusco",
    "tallinn",
    "marrakesh",
    "antwerp",
    "halifax",
    "trieste",
    "bergen",
    "windhoek",
    "asuncion",
    "gdansk",
    "leuven",
    "salzburg",
    "ushuaia",
    "zanzibar",
    "bruges",
];
const ANIMALS: &[&str] = &[
    "beagle",
    "parrot",
    "tortoise",
    "ferret",
    "axolotl",
    "greyhound",
    "iguana",
    "chinchilla",
    "dachshund",
    "cockatiel",
    "hedgehog",
    "corgi",
];
const HOBBIES: &[&str] = &[
    "cello",
    "pottery",
    "fencing",
    "bouldering",
    "calligraphy",
    "beekeeping",
    "origami",
    "sailing",
    "woodturning",
    "archery",
    "kayaking",
    "falconry",
    "glassblowing",
    "tango",
    "chess",
    "ukulele",
];
const JOBS: &[&str] = &[
    "cartographer",
    "luthier",
    "actuary",
    "sommelier",
    "stonemason",
    "archivist",
    "radiologist",
    "typesetter",
    "agronomist",
    "glazier",
    "locksmith",
    "translator",
];
const FILLER_TOPICS: &[&str] = &[
    "weather",
    "traffic",
    "coffee",
    "groceries",
    "laundry",
    "emails",
    "meetings",
    "podcasts",
    "sleep",
    "breakfast",
    "movies",
    "budget",
    "garden",
    "playlist",
    "commute",
    "stretching",
];
const FILLER_WORDS: &[&str] = &[
    "really", "pretty", "today", "again", "maybe", "later", "quite", "somewhat", "usual", "busy",
    "calm", "long", "short", "nice", "odd", "slow", "quick", "early", "late", "fine",
];

struct Gen {
    rng: SeededRng,
}

impl Gen {
    fn pick<'a>(&mut self, xs: &'a [&'a str]) -> &'a str {
        let i = (self.rng.next_u64() % xs.len() as u64) as usize;
        xs.get(i).copied().unwrap_or_default()
    }

    fn below(&mut self, n: usize) -> usize {
        (self.rng.next_u64() % n.max(1) as u64) as usize
    }

    /// A made-up name not in `used` (three syllables: thousands of combinations).
    fn name(&mut self, used: &mut Vec<String>) -> String {
        loop {
            let n = format!(
                "{}{}{}",
                self.pick(SYLLABLES),
                self.pick(SYLLABLES),
                self.pick(SYLLABLES)
            );
            if !used.contains(&n) {
                used.push(n.clone());
                return n;
            }
        }
    }

    /// Distinct picks (as many as the list allows).
    fn distinct<'a>(
        &mut self,
        xs: &'a [&'a str],
        n: usize,
        used: &mut Vec<&'a str>,
    ) -> Vec<&'a str> {
        let mut out = Vec::new();
        let mut tries = 0;
        while out.len() < n && tries < 1000 {
            tries += 1;
            let x = self.pick(xs);
            if !used.contains(&x) {
                used.push(x);
                out.push(x);
            }
        }
        out
    }

    fn filler(&mut self) -> String {
        let t = self.pick(FILLER_TOPICS);
        let a = self.pick(FILLER_WORDS);
        let b = self.pick(FILLER_WORDS);
        let u = self.pick(FILLER_TOPICS);
        match self.below(4) {
            0 => format!("the {t} was {a} {b} so i spent some time on {u} instead"),
            1 => format!("can you remind me about {t} and {u} {a}"),
            2 => format!("sure, here is a {a} note on {t}: keep it {b} and revisit {u}"),
            _ => format!("i feel {a} about the {t} but the {u} went {b}"),
        }
    }
}

/// A planted fact, before it is placed in a session.
struct Planted {
    session: usize,
    text: String,
    /// Question group: `(kind, group number)`.
    group: (QuestionKind, usize),
    /// For knowledge updates: the position in its group (0 is the original).
    order: usize,
}

/// Generates a conversation and its questions from the config (deterministic in the seed).
pub fn generate(config: &LongMemConfig) -> LongMemSet {
    let mut g = Gen {
        rng: SeededRng::new(config.seed),
    };
    let sessions = config.sessions.max(2);
    let n = config.questions_per_kind;
    let mut planted: Vec<Planted> = Vec::new();
    let mut questions: Vec<(QuestionKind, usize, String, Option<String>)> = Vec::new();
    let mut used_names: Vec<String> = Vec::new();
    let mut used_hobbies = Vec::new();

    // single facts: a pet, a relative's city, a job
    for i in 0..n {
        let s = g.below(sessions);
        let (fact, q, a) = match i % 3 {
            0 => {
                let name = g.name(&mut used_names);
                let animal = g.pick(ANIMALS);
                (
                    format!("by the way i adopted a {animal} and named it {name}"),
                    format!("what kind of animal is my pet {name}"),
                    animal.to_string(),
                )
            }
            1 => {
                let name = g.name(&mut used_names);
                let city = g.pick(CITIES);
                (
                    format!("my cousin {name} just moved to {city} for a new start"),
                    format!("which city did my cousin {name} move to"),
                    city.to_string(),
                )
            }
            _ => {
                let name = g.name(&mut used_names);
                let job = g.pick(JOBS);
                (
                    format!("my neighbour {name} works as a {job} downtown"),
                    format!("what does my neighbour {name} do for work"),
                    job.to_string(),
                )
            }
        };
        planted.push(Planted {
            session: s,
            text: fact,
            group: (QuestionKind::SingleFact, i),
            order: 0,
        });
        questions.push((QuestionKind::SingleFact, i, q, Some(a)));
    }

    // multi-session: hobbies picked up in different sessions
    for i in 0..n {
        let friend = g.name(&mut used_names);
        let hobbies = g.distinct(HOBBIES, 3, &mut used_hobbies);
        if hobbies.is_empty() {
            used_hobbies.clear();
            continue;
        }
        for h in &hobbies {
            planted.push(Planted {
                session: g.below(sessions),
                text: format!("this week {friend} and i tried {h} together at the club"),
                group: (QuestionKind::MultiSession, i),
                order: 0,
            });
        }
        if used_hobbies.len() + 3 > HOBBIES.len() {
            used_hobbies.clear();
        }
        questions.push((
            QuestionKind::MultiSession,
            i,
            format!("which activities have {friend} and i tried together at the club"),
            Some(hobbies.join(", ")),
        ));
    }

    // temporal: two trips, which came first
    for i in 0..n {
        let companion = g.name(&mut used_names);
        let a = g.pick(CITIES);
        let mut b = g.pick(CITIES);
        while b == a {
            b = g.pick(CITIES);
        }
        let s1 = g.below(sessions - 1);
        let s2 = s1 + 1 + g.below(sessions - s1 - 1);
        planted.push(Planted {
            session: s1,
            text: format!("{companion} and i just got back from a trip to {a}"),
            group: (QuestionKind::Temporal, i),
            order: 0,
        });
        planted.push(Planted {
            session: s2,
            text: format!("{companion} and i just got back from a trip to {b}"),
            group: (QuestionKind::Temporal, i),
            order: 1,
        });
        questions.push((
            QuestionKind::Temporal,
            i,
            format!("which trip with {companion} came first, {a} or {b}"),
            Some(a.to_string()),
        ));
    }

    // knowledge updates: a fact, later changed
    for i in 0..n {
        let name = g.name(&mut used_names);
        let old = g.pick(CITIES);
        let mut new = g.pick(CITIES);
        while new == old {
            new = g.pick(CITIES);
        }
        let s1 = g.below(sessions - 1);
        let s2 = s1 + 1 + g.below(sessions - s1 - 1);
        planted.push(Planted {
            session: s1,
            text: format!("my friend {name} lives in {old} these days"),
            group: (QuestionKind::KnowledgeUpdate, i),
            order: 0,
        });
        planted.push(Planted {
            session: s2,
            text: format!("my friend {name} lives in {new} these days"),
            group: (QuestionKind::KnowledgeUpdate, i),
            order: 1,
        });
        questions.push((
            QuestionKind::KnowledgeUpdate,
            i,
            format!("where does my friend {name} live now"),
            Some(new.to_string()),
        ));
    }

    // distractors: the same people in unrelated chatter
    for name in used_names.clone() {
        for _ in 0..config.distractors_per_name {
            let text = match g.below(3) {
                0 => format!(
                    "{name} recommended a podcast about {} in {}",
                    g.pick(FILLER_TOPICS),
                    g.pick(CITIES)
                ),
                1 => format!(
                    "i ran into {name} at the {} shop and we talked about a {} and {}",
                    g.pick(FILLER_TOPICS),
                    g.pick(ANIMALS),
                    g.pick(HOBBIES)
                ),
                _ => format!(
                    "{name} asked whether the {} from {} still works there",
                    g.pick(JOBS),
                    g.pick(CITIES)
                ),
            };
            planted.push(Planted {
                session: g.below(sessions),
                text,
                group: (QuestionKind::Abstention, usize::MAX),
                order: 0,
            });
        }
    }

    // abstention: about people never mentioned
    let mut abstain = Vec::new();
    for _ in 0..n.div_ceil(2) {
        let who = g.name(&mut used_names);
        abstain.push(format!("what instrument does my aunt {who} teach"));
    }

    // lay out the sessions
    let mut turns: Vec<Turn> = Vec::new();
    // (kind, group, order) -> turn index
    let mut placed: Vec<((QuestionKind, usize), usize, usize)> = Vec::new();
    let gap = chrono::Duration::from_std(config.session_gap).unwrap_or_default();
    for s in 0..sessions {
        let start = config.start + gap * s as i32;
        let mut items: Vec<Option<usize>> = (0..config.filler_per_session).map(|_| None).collect();
        for (p, fact) in planted.iter().enumerate() {
            if fact.session == s {
                let pos = g.below(items.len() + 1);
                items.insert(pos, Some(p));
            }
        }
        for (t, item) in items.into_iter().enumerate() {
            let at = start + chrono::Duration::minutes(2 * t as i64);
            match item {
                None => turns.push(Turn {
                    session: s,
                    at,
                    speaker: if t % 2 == 0 { "user" } else { "assistant" },
                    text: g.filler(),
                    updates: None,
                }),
                Some(p) => {
                    if let Some(fact) = planted.get(p) {
                        placed.push((fact.group, fact.order, turns.len()));
                        turns.push(Turn {
                            session: s,
                            at,
                            speaker: "user",
                            text: fact.text.clone(),
                            updates: None,
                        });
                    }
                }
            }
        }
    }
    // knowledge updates point at the turn they replace
    for (group, order, turn) in &placed {
        if group.0 == QuestionKind::KnowledgeUpdate && *order == 1 {
            let original = placed
                .iter()
                .find(|(g2, o2, _)| g2 == group && *o2 == 0)
                .map(|(_, _, t)| *t);
            if let Some(t) = turns.get_mut(*turn) {
                t.updates = original;
            }
        }
    }
    let mut out = Vec::new();
    for (kind, group, text, answer) in questions {
        let mut evidence: Vec<usize> = placed
            .iter()
            .filter(|(g2, order, _)| {
                *g2 == (kind, group) && (kind != QuestionKind::KnowledgeUpdate || *order == 1)
            })
            .map(|(_, _, t)| *t)
            .collect();
        evidence.sort_unstable();
        out.push(Question {
            kind,
            text,
            evidence,
            answer,
        });
    }
    for text in abstain {
        out.push(Question {
            kind: QuestionKind::Abstention,
            text,
            evidence: Vec::new(),
            answer: None,
        });
    }
    LongMemSet {
        turns,
        questions: out,
    }
}

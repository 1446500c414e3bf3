//! The Worker service's messages, as library types with their wire conversions side by side (see
//! `rpc::coordinator` for the pattern): an [`AnswerCall`] (a batch of questions, facts by content
//! hash), its [`AnswerReply`], and the worker's [`WorkerInfo`].
//!
//! [`AnswerCall::decode`] enforces the call's limits (items, instances, facts and question sizes,
//! well-formed ids, item indices in range); [`AnswerCall::resolve`] then parses it against the
//! domain, with the worker's facts cache supplying instances sent before.

use std::sync::Arc;
use std::time::Duration;

use super::{limits, pb, ServiceError};
use crate::answerer::{AnswererId, Query};
use crate::domain::{parse_question_for, Domain, DomainKind, Instance, InstanceId, UNKNOWN_TEXT};

/// The facts of one instance in a call: the text the first time a worker sees it, afterwards only
/// the id.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FactsRef {
    pub id: InstanceId,
    /// The facts in the domain's text syntax; `None` to refer to facts sent before.
    pub text: Option<String>,
}

/// A batch of questions for a worker.
///
/// The questions travel as one text, a line each (see the proto), and stay that way here: a
/// worker parses each line straight from the request's buffer, with no string per question.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AnswerCall {
    pub domain: DomainKind,
    pub instances: Vec<FactsRef>,
    /// The questions in the domain's text syntax, each ended by `\n`.
    questions: String,
    /// For each question, its index into `instances`.
    question_instances: Vec<u32>,
}

/// A call parsed against its domain.
pub enum Resolved<D: Domain> {
    /// Every instance is at hand: the questions, and the instances whose text came with this call
    /// (for the worker to remember).
    Queries {
        queries: Vec<Query<D>>,
        received: Vec<Arc<Instance<D>>>,
    },
    /// The worker no longer has these facts: the caller must send them again with their text.
    MissingFacts(Vec<InstanceId>),
}

impl AnswerCall {
    /// The call for `queries` (in order): each instance listed once, with its text unless `known`
    /// says the worker has it.
    pub fn of_queries<'q, D: Domain + 'q>(
        domain: &D,
        queries: impl IntoIterator<Item = &'q Query<D>>,
        known: impl Fn(&InstanceId) -> bool,
    ) -> Self {
        let queries = queries.into_iter();
        let mut call = Self {
            domain: D::KIND,
            instances: Vec::new(),
            questions: String::new(),
            question_instances: Vec::with_capacity(queries.size_hint().0),
        };
        for query in queries {
            let id = query.instance.id();
            // Most groups are about one instance: look at the last one first.
            let i = match call.instances.iter().rposition(|f| f.id == id) {
                Some(i) => i,
                None => {
                    call.instances.push(FactsRef {
                        id,
                        text: (!known(&id)).then(|| domain.print_facts(query.instance.facts())),
                    });
                    call.instances.len() - 1
                }
            };
            // Printed text is one line (tests/text_syntax.rs holds every domain to it).
            domain.write_question(&query.question, &mut call.questions);
            call.questions.push('\n');
            call.question_instances.push(i as u32);
        }
        call
    }

    /// The number of questions.
    pub fn len(&self) -> usize {
        self.question_instances.len()
    }

    pub fn is_empty(&self) -> bool {
        self.question_instances.is_empty()
    }

    /// The questions in order: the index of each one's instance, and its text.
    pub fn items(&self) -> impl Iterator<Item = (u32, &str)> + '_ {
        self.question_instances
            .iter()
            .copied()
            .zip(self.questions.split_terminator('\n'))
    }

    pub fn encode(self) -> pb::AnswerRequest {
        pb::AnswerRequest {
            domain: self.domain.name().to_string(),
            instances: self
                .instances
                .into_iter()
                .map(|f| pb::Facts {
                    id: f.id.0.to_vec(),
                    text: f.text.unwrap_or_default(),
                })
                .collect(),
            questions: self.questions,
            question_instances: self.question_instances,
        }
    }

    pub fn decode(request: pb::AnswerRequest) -> Result<Self, ServiceError> {
        let domain: DomainKind = request.domain.parse()?;
        let count = request.question_instances.len();
        limits::check_count("items", count, limits::MAX_BATCH_ITEMS)?;
        limits::check_count(
            "instances",
            request.instances.len(),
            limits::MAX_BATCH_INSTANCES,
        )?;
        let instances = request
            .instances
            .into_iter()
            .enumerate()
            .map(|(i, facts)| {
                let id = instance_id(&facts.id).ok_or_else(|| {
                    ServiceError::invalid(format!(
                        "instance {i}: id must be the 32-byte SHA-256 of the facts text, got {} \
                         bytes",
                        facts.id.len()
                    ))
                })?;
                limits::check_bytes(
                    format_args!("instance {i}: facts text"),
                    &facts.text,
                    limits::MAX_FACTS_BYTES,
                )?;
                Ok(FactsRef {
                    id,
                    text: Some(facts.text).filter(|t| !t.is_empty()),
                })
            })
            .collect::<Result<Vec<_>, ServiceError>>()?;
        check_lines("questions", &request.questions, count)?;
        for (i, (&instance, question)) in request
            .question_instances
            .iter()
            .zip(request.questions.split_terminator('\n'))
            .enumerate()
        {
            if instance as usize >= instances.len() {
                return Err(ServiceError::invalid(format!(
                    "item {i}: instance index {instance} is out of range ({} instances sent)",
                    instances.len()
                )));
            }
            limits::check_bytes(
                format_args!("item {i}: question"),
                question,
                limits::MAX_QUESTION_BYTES,
            )?;
        }
        Ok(Self {
            domain,
            instances,
            questions: request.questions,
            question_instances: request.question_instances,
        })
    }

    /// Parses the call against `domain` (which must be the call's): instances sent with their text
    /// are parsed and checked against their id, the others looked up with `cached`; then every
    /// question is parsed and checked against its instance.
    pub fn resolve<D: Domain>(
        self,
        domain: &D,
        cached: impl Fn(&InstanceId) -> Option<Arc<Instance<D>>>,
    ) -> Result<Resolved<D>, ServiceError> {
        debug_assert_eq!(D::KIND, self.domain);
        let mut instances = Vec::with_capacity(self.instances.len());
        let mut received = Vec::new();
        let mut missing = Vec::new();
        for (i, facts) in self.instances.iter().enumerate() {
            let Some(text) = &facts.text else {
                let found = cached(&facts.id);
                if found.is_none() {
                    missing.push(facts.id);
                }
                instances.push(found);
                continue;
            };
            let instance = Instance::parse(domain, text)
                .map_err(|e| ServiceError::invalid(format!("instance {i}: {e}")))?;
            if instance.id() != facts.id {
                return Err(ServiceError::invalid(format!(
                    "instance {i}: id {} is not the SHA-256 of the facts' canonical text ({})",
                    facts.id,
                    instance.id()
                )));
            }
            received.push(instance.clone());
            instances.push(Some(instance));
        }
        if !missing.is_empty() {
            return Ok(Resolved::MissingFacts(missing));
        }
        let queries = self
            .items()
            .enumerate()
            .map(|(i, (index, question))| {
                // In range (checked by `decode`) and present (no facts are missing).
                let instance = instances
                    .get(index as usize)
                    .cloned()
                    .flatten()
                    .ok_or_else(|| ServiceError::Internal(format!("item {i}: no instance")))?;
                let question = parse_question_for(domain, instance.facts(), question)
                    .map_err(|e| ServiceError::invalid(format!("item {i}: {e}")))?;
                Ok(Query { instance, question })
            })
            .collect::<Result<_, ServiceError>>()?;
        Ok(Resolved::Queries { queries, received })
    }
}

/// Checks that `text` is `count` lines, each ended by a newline (the framing of a call's
/// questions and of a reply's answers).
fn check_lines(what: &str, text: &str, count: usize) -> Result<(), ServiceError> {
    let lines = text.bytes().filter(|&b| b == b'\n').count();
    if lines != count || !(text.is_empty() || text.ends_with('\n')) {
        return Err(ServiceError::invalid(format!(
            "{what}: expected {count} lines, each ended by a newline, got {lines} newline(s) in \
             {} bytes",
            text.len()
        )));
    }
    Ok(())
}

fn instance_id(bytes: &[u8]) -> Option<InstanceId> {
    Some(InstanceId(bytes.try_into().ok()?))
}

/// A worker's reply to an [`AnswerCall`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AnswerReply {
    /// One line per item, in order (see [`AnswerReply::replies`]), with the time the batch waited
    /// in the worker's queue and the time its forward pass took.
    Answered {
        /// The answers in the domain's text syntax, `?` where unknown, each ended by `\n`.
        answers: String,
        queue: Duration,
        compute: Duration,
    },
    /// The worker does not have these facts: resend the call with their text.
    MissingFacts(Vec<InstanceId>),
}

impl AnswerReply {
    /// The reply carrying `answers`.
    pub fn of_answers<D: Domain>(
        domain: &D,
        answers: &[Option<D::Answer>],
        queue: Duration,
        compute: Duration,
    ) -> Self {
        let mut text = String::new();
        for answer in answers {
            // Printed text is one line (tests/text_syntax.rs holds every domain to it).
            match answer {
                Some(a) => domain.write_answer(a, &mut text),
                None => text.push_str(UNKNOWN_TEXT),
            }
            text.push('\n');
        }
        AnswerReply::Answered {
            answers: text,
            queue,
            compute,
        }
    }

    /// An answered reply's texts, in order; `None` for a reply that says what is missing.
    pub fn replies(&self) -> Option<impl Iterator<Item = &str> + '_> {
        match self {
            AnswerReply::Answered { answers, .. } => Some(answers.split_terminator('\n')),
            AnswerReply::MissingFacts(_) => None,
        }
    }

    pub fn encode(self) -> pb::AnswerResponse {
        match self {
            AnswerReply::Answered {
                answers,
                queue,
                compute,
            } => pb::AnswerResponse {
                answers,
                missing_facts: Vec::new(),
                queue_us: queue.as_micros() as u64,
                compute_us: compute.as_micros() as u64,
            },
            AnswerReply::MissingFacts(ids) => pb::AnswerResponse {
                missing_facts: ids.into_iter().map(|id| id.0.to_vec()).collect(),
                ..Default::default()
            },
        }
    }

    /// A worker's reply; `asked` is the number of items in the call, which an answered reply must
    /// match.
    pub fn decode(response: pb::AnswerResponse, asked: usize) -> Result<Self, ServiceError> {
        if !response.missing_facts.is_empty() {
            return response
                .missing_facts
                .iter()
                .map(|id| instance_id(id))
                .collect::<Option<Vec<_>>>()
                .map(AnswerReply::MissingFacts)
                .ok_or_else(|| {
                    ServiceError::Internal("the worker sent a malformed missing-facts id".into())
                });
        }
        check_lines("answers", &response.answers, asked).map_err(|e| {
            ServiceError::Internal(format!(
                "the worker's reply does not fit the call of {asked} questions: {}",
                e.message()
            ))
        })?;
        Ok(AnswerReply::Answered {
            answers: response.answers,
            queue: Duration::from_micros(response.queue_us),
            compute: Duration::from_micros(response.compute_us),
        })
    }
}

/// What a worker serves (its ModelInfo).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkerInfo {
    pub domains: Vec<DomainKind>,
    /// The worker's answerer: a model generation, the oracle, or "not loaded".
    pub answerer: AnswererId,
    pub max_batch: u32,
    pub queue_capacity: u32,
}

impl WorkerInfo {
    pub fn serves(&self, domain: DomainKind) -> bool {
        self.domains.contains(&domain)
    }

    pub fn encode(self) -> pb::ModelInfoResponse {
        pb::ModelInfoResponse {
            domains: self.domains.iter().map(|d| d.name().to_string()).collect(),
            answerer: self.answerer.label().to_string(),
            answerer_key: self.answerer.key(),
            generation: self.answerer.generation(),
            max_batch: self.max_batch,
            queue_capacity: self.queue_capacity,
        }
    }

    pub fn decode(info: pb::ModelInfoResponse) -> Result<Self, ServiceError> {
        let malformed = |what: &str| ServiceError::Internal(format!("the worker sent {what}"));
        Ok(Self {
            domains: info
                .domains
                .iter()
                .map(|d| {
                    d.parse::<DomainKind>()
                        .map_err(|e| malformed(&e.to_string()))
                })
                .collect::<Result<_, _>>()?,
            answerer: AnswererId::from_parts(info.answerer_key, &info.answerer, info.generation)
                .ok_or_else(|| malformed("answerer key 0, which no answerer has"))?,
            max_batch: info.max_batch,
            queue_capacity: info.queue_capacity,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::wildcard::Wildcard;
    use tonic::Code;

    fn queries() -> Vec<Query<Wildcard>> {
        let a = Instance::generate(&Wildcard, 6, 1).unwrap();
        let b = Instance::generate(&Wildcard, 6, 2).unwrap();
        ["01*0**", "******", "0*****"]
            .iter()
            .zip([&a, &b, &a])
            .map(|(q, i)| Query {
                instance: (*i).clone(),
                question: Wildcard.parse_question(q).unwrap(),
            })
            .collect()
    }

    #[test]
    fn calls_round_trip_and_resolve_to_the_same_queries() {
        let qs = queries();
        let known = qs[1].instance.id();
        let call = AnswerCall::of_queries(&Wildcard, &qs, |id| *id == known);
        assert_eq!(call.instances.len(), 2, "each instance listed once");
        assert!(call.instances[1].text.is_none(), "known facts go by id");
        assert_eq!(
            call.items().collect::<Vec<_>>(),
            [(0, "01*0**"), (1, "******"), (0, "0*****")]
        );
        let decoded = AnswerCall::decode(call.clone().encode()).unwrap();
        assert_eq!(decoded, call);
        // Without the cached instance, the worker asks for it.
        match decoded.clone().resolve(&Wildcard, |_| None).unwrap() {
            Resolved::MissingFacts(ids) => assert_eq!(ids, vec![known]),
            Resolved::Queries { .. } => panic!("facts were missing"),
        }
        let cached = qs[1].instance.clone();
        match decoded.resolve(&Wildcard, |id| (*id == known).then(|| cached.clone())) {
            Ok(Resolved::Queries { queries, received }) => {
                assert_eq!(received.len(), 1);
                assert_eq!(queries.len(), qs.len());
                for (got, want) in queries.iter().zip(&qs) {
                    assert_eq!(got.instance.id(), want.instance.id());
                    assert_eq!(got.question, want.question);
                }
            }
            _ => panic!("every instance was at hand"),
        }
    }

    #[test]
    fn replies_and_info_round_trip() {
        for reply in [
            AnswerReply::Answered {
                answers: "3\n?\n-1\n\n".into(),
                queue: Duration::from_micros(12),
                compute: Duration::from_micros(345),
            },
            AnswerReply::Answered {
                answers: String::new(),
                queue: Duration::ZERO,
                compute: Duration::ZERO,
            },
            AnswerReply::MissingFacts(vec![InstanceId([7; 32]), InstanceId([9; 32])]),
        ] {
            let asked = reply.replies().map_or(0, |r| r.count());
            if let Some(replies) = reply.replies() {
                let unknown = crate::domain::UNKNOWN_TEXT;
                let want: &[&str] = if asked == 0 {
                    &[]
                } else {
                    &["3", unknown, "-1", ""]
                };
                assert_eq!(replies.collect::<Vec<_>>(), want);
            }
            assert_eq!(
                AnswerReply::decode(reply.clone().encode(), asked).unwrap(),
                reply
            );
        }
        for answerer in [
            AnswererId::oracle(),
            AnswererId::not_loaded(),
            AnswererId::model(5, "0123456789abcdef"),
        ] {
            let info = WorkerInfo {
                domains: vec![DomainKind::Permutation, DomainKind::ShortestPath],
                answerer,
                max_batch: 512,
                queue_capacity: 1024,
            };
            assert_eq!(WorkerInfo::decode(info.clone().encode()).unwrap(), info);
        }
    }

    /// Each limit of a call gets INVALID_ARGUMENT with a message that names the part.
    #[test]
    fn call_decoding_enforces_the_limits() {
        let qs = queries();
        let good = || AnswerCall::of_queries(&Wildcard, &qs, |_| false).encode();
        let mut cases: Vec<(pb::AnswerRequest, &str)> = Vec::new();
        let mut r = good();
        r.domain = "go".into();
        cases.push((r, "unknown domain"));
        let mut r = good();
        r.questions = "01*0**\n".repeat(limits::MAX_BATCH_ITEMS + 1);
        r.question_instances = vec![0; limits::MAX_BATCH_ITEMS + 1];
        cases.push((r, "items in one call"));
        let mut r = good();
        r.instances = vec![r.instances[0].clone(); limits::MAX_BATCH_INSTANCES + 1];
        cases.push((r, "instances in one call"));
        let mut r = good();
        r.instances[0].id = vec![1, 2, 3];
        cases.push((r, "32-byte"));
        let mut r = good();
        r.instances[0].text = "0".repeat(limits::MAX_FACTS_BYTES + 1);
        cases.push((r, "facts text"));
        let mut r = good();
        r.question_instances[1] = 7;
        cases.push((r, "item 1: instance index 7"));
        let mut r = good();
        r.questions = format!(
            "01*0**\n******\n{}\n",
            "*".repeat(limits::MAX_QUESTION_BYTES + 1)
        );
        cases.push((r, "item 2: question"));
        // The questions' lines must match their instance indices, one each, newline-ended.
        let mut r = good();
        r.questions.push_str("0*****\n");
        cases.push((r, "questions: expected 3 lines"));
        let mut r = good();
        r.questions.pop();
        cases.push((r, "each ended by a newline"));
        let mut r = good();
        r.question_instances.pop();
        cases.push((r, "questions: expected 2 lines"));
        for (request, needle) in cases {
            let e = AnswerCall::decode(request).unwrap_err();
            assert_eq!(e.code(), Code::InvalidArgument, "{needle}: {e}");
            assert!(e.message().contains(needle), "{needle}: {e}");
        }
        // Facts whose text does not hash to their id, and questions that do not fit them.
        let mut call = AnswerCall::decode(good()).unwrap();
        call.instances[0].id = InstanceId([0; 32]);
        let e = call.resolve(&Wildcard, |_| None).err().unwrap();
        assert!(e.message().contains("is not the SHA-256"), "{e}");
        let mut r = good();
        r.questions = r.questions.replacen("01*0**", "*", 1);
        let call = AnswerCall::decode(r).unwrap();
        let e = call.resolve(&Wildcard, |_| None).err().unwrap();
        assert_eq!(e.code(), Code::InvalidArgument);
        assert!(e.message().starts_with("item 0"), "{e}");
    }

    #[test]
    fn malformed_replies_are_internal_errors() {
        let reply = AnswerReply::Answered {
            answers: "?\n".into(),
            queue: Duration::ZERO,
            compute: Duration::ZERO,
        };
        let e = AnswerReply::decode(reply.clone().encode(), 2).unwrap_err();
        assert_eq!(e.code(), Code::Internal);
        assert!(e.message().contains("call of 2 questions"), "{e}");
        // The last answer's newline missing is as wrong as an answer missing.
        let mut response = reply.encode();
        response.answers.pop();
        let e = AnswerReply::decode(response, 1).unwrap_err();
        assert_eq!(e.code(), Code::Internal);
        let info = pb::ModelInfoResponse {
            answerer_key: 0,
            ..Default::default()
        };
        assert_eq!(WorkerInfo::decode(info).unwrap_err().code(), Code::Internal);
    }
}

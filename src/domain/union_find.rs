//! STUB: being written.
use super::{Domain, DomainError, DomainKind};
use crate::eval::Ask;
use crate::rng::Rng;
use crate::text::ParseError;

#[derive(Clone, Copy, Debug, Default)]
pub struct UnionFind;

impl Domain for UnionFind {
    const KIND: DomainKind = DomainKind::UnionFind;
    const WELL_FOUNDED: bool = false;
    const MIN_SIZE: usize = 1;
    const FACT_WIDTH: usize = 1;
    const QUESTION_WIDTH: usize = 1;
    type Facts = ();
    type Question = ();
    type Answer = ();
    fn generate(&self, _: usize, _: u64) -> Result<(), DomainError> { todo!() }
    fn size(&self, _: &()) -> usize { todo!() }
    fn sample_question(&self, _: &(), _: &mut Rng) {}
    fn difficulty(&self, _: &(), _: &()) -> u32 { todo!() }
    fn check_question(&self, _: &(), _: &()) -> Result<(), String> { todo!() }
    fn truth(&self, _: &(), _: &()) {}
    async fn oversee<'a>(&'a self, _: &'a (), _: &'a (), _: Ask<'a, Self>) -> Option<()> { todo!() }
    fn parse_facts(&self, _: &str) -> Result<(), ParseError> { todo!() }
    fn print_facts(&self, _: &()) -> String { todo!() }
    fn parse_question(&self, _: &str) -> Result<(), ParseError> { todo!() }
    fn print_question(&self, _: &()) -> String { todo!() }
    fn parse_answer(&self, _: &str) -> Result<(), ParseError> { todo!() }
    fn print_answer(&self, _: &()) -> String { todo!() }
    fn vocab_size(&self) -> usize { todo!() }
    fn encode_facts(&self, _: &()) -> Vec<u32> { todo!() }
    fn encode_question(&self, _: &()) -> Vec<u32> { todo!() }
    fn answer_classes(&self) -> usize { todo!() }
    fn answer_class(&self, _: &()) -> usize { todo!() }
    fn class_answer(&self, _: usize) -> Option<()> { todo!() }
}

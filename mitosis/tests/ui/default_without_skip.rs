fn zero() -> u64 {
    0
}

#[derive(mitosis::Handover)]
struct State {
    #[handover(default = "zero")]
    generation: u64,
}

fn main() {}

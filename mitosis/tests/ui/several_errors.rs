fn zero() -> u64 {
    0
}

#[derive(mitosis::Handover)]
#[handover(version = 1, versoin = 2)]
struct State {
    #[handover(skipp)]
    cache: Vec<u8>,
    #[handover(default = "zero")]
    generation: u64,
}

fn main() {}

#[derive(mitosis::Handover)]
#[handover(version = 1, version = 2)]
struct State {
    generation: u64,
}

fn main() {}

#[derive(mitosis::Handover)]
#[handover(version = 2)]
struct State {
    generation: u64,
    #[handover(since = 3, default)]
    count: u64,
}

fn main() {}

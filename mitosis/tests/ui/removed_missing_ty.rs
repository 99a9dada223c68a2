#[derive(mitosis::Handover)]
#[handover(version = 3, removed(name = "legacy", since = 3))]
struct State {
    generation: u64,
}

fn main() {}

#[derive(mitosis::Handover)]
#[handover(version = 2)]
struct State {
    generation: u64,
    #[handover(skip, since = 2)]
    cache: u64,
}

fn main() {}

#[derive(mitosis::Handover)]
#[handover(crate = "my crate::mitosis")]
struct State {
    generation: u64,
}

fn main() {}

#[derive(mitosis::Handover)]
struct State {
    #[handover(skipp)]
    cache: Vec<u8>,
}

fn main() {}

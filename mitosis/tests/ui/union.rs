#[derive(mitosis::Handover)]
union State {
    count: u32,
    bits: f32,
}

fn main() {}

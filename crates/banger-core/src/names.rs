//! Readable random VM names (`brave-otter`), used when `vm create` is given none.

use rand::seq::SliceRandom;
use rand::Rng;

const ADJECTIVES: &[&str] = &[
    "able", "agile", "amber", "ample", "azure", "bold", "brave", "brisk", "calm", "civil", "clear",
    "clever", "cosmic", "crisp", "curious", "daring", "deft", "eager", "early", "fair", "fancy",
    "fast", "fluent", "fond", "frank", "free", "fresh", "gentle", "glad", "golden", "grand",
    "happy", "hardy", "honest", "humble", "jolly", "keen", "kind", "lively", "loyal", "lucid",
    "lucky", "mellow", "merry", "mighty", "modest", "neat", "nimble", "noble", "olive", "patient",
    "plucky", "polite", "proud", "quick", "quiet", "rapid", "ready", "robust", "rosy", "royal",
    "rustic", "sage", "sharp", "shiny", "silent", "sleek", "smart", "snowy", "solid", "steady",
    "stoic", "sturdy", "sunny", "swift", "tidy", "tranquil", "trusty", "upbeat", "vast", "vivid",
    "warm", "wise", "witty", "zesty",
];

const NOUNS: &[&str] = &[
    "acorn", "badger", "beacon", "bison", "breeze", "brook", "canyon", "cedar", "comet", "coral",
    "crane", "delta", "dune", "eagle", "ember", "falcon", "fern", "finch", "fjord", "forest",
    "fox", "galaxy", "glacier", "grove", "harbor", "hawk", "heron", "island", "jaguar", "kestrel",
    "lagoon", "lark", "lynx", "maple", "meadow", "mesa", "moose", "nebula", "oak", "orbit", "orca",
    "otter", "owl", "panda", "pebble", "pine", "planet", "prairie", "quartz", "raven", "reef",
    "ridge", "river", "robin", "sable", "salmon", "sequoia", "sparrow", "spruce", "summit", "swan",
    "thistle", "tiger", "tundra", "valley", "walrus", "willow", "wolf", "wren", "yak", "zephyr",
];

/// A random `adjective-noun` name, or `adjective-noun-NN` when `suffix` is set (used after
/// collisions). Always a valid DNS label.
pub fn random_name(rng: &mut impl Rng, suffix: bool) -> String {
    let adjective = ADJECTIVES.choose(rng).copied().unwrap_or("brave");
    let noun = NOUNS.choose(rng).copied().unwrap_or("otter");
    if suffix {
        format!("{adjective}-{noun}-{}", rng.gen_range(10..100))
    } else {
        format!("{adjective}-{noun}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_names_are_valid_vm_names() {
        let mut rng = rand::thread_rng();
        for i in 0..500 {
            let name = random_name(&mut rng, i % 2 == 0);
            assert!(banger_api::VmName::parse(&name).is_ok(), "{name}");
        }
    }
}

/** What test/helpers/isa-probe.ts and test/isa.test.ts agree on: the gpt-oss experts' activation and bias scale. */
// (a limit that clamps a good share of the pre-activations, so both sides of each clamp are checked)
export const GPT_OSS = { alpha: 1.702, limit: 0.9, biasScale: 0.5 };

#pragma once

#include <array>
#include <string>
#include <vector>

namespace nodepool {

/// A deterministic text embedding: counts of hashed character trigrams
/// (FNV-1a into 256 buckets), L2-normalised. Texts sharing most of their
/// trigrams point the same way; unrelated texts are near-orthogonal. Used to
/// compare the outputs of redundant nodes when the backend gives none.
using embedding = std::array<float, 256>;

embedding embed(const std::string& text);

/// Cosine similarity of two embeddings, in [-1, 1] (0 if either is zero).
double cosine(const embedding& a, const embedding& b);

/// Indexes of the outputs that agree (cosine >= `threshold`) with fewer than
/// half of the others. With fewer than 3 outputs there is no majority: two outputs
/// that disagree are both returned.
std::vector<size_t> outliers(const std::vector<std::string>& outputs,
                             double threshold);

} // namespace nodepool

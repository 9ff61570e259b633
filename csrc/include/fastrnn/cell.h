// SPDX-License-Identifier: MIT
// cell.h — the Cell concept in prose. A cell is a tiny struct with its gate count, a few traits
// the engine reads at compile time, and the pointwise maths of one hidden unit. It knows
// nothing about time, batches, GEMMs, lengths or memory: the engine owns all of that.
//
// Required members of a Cell:
//
//   static constexpr int  kGates;              G: gate blocks in w_ih / w_hh (rows g*H + j)
//   static constexpr int  kSaved;              values per hidden unit that forward keeps for
//                                              backward when training: saved [T,B,kSaved*H],
//                                              value s of unit j at s*H + j
//   static constexpr bool kHasCellState;       carries c [B,H] beside h (LSTM)
//   static constexpr bool kCanProject;         may have w_hr (LSTM proj_size)
//   static constexpr bool kReadsHPrev;         the pointwise maths reads h_{t-1} (GRU's z⊙h);
//                                              such cells never have a projection, so h is [B,H]
//   static constexpr bool kSplitRecurrentGrad; the gradient of the recurrent pre-activation
//                                              differs from that of the input one (GRU's
//                                              r⊙(W_hn h + b_hn)), so backward keeps both
//   static constexpr bool kResetBeforeMatmul;  GRU variant B: the n-gate's recurrent GEMM reads
//                                              r⊙h, so each step runs two recurrent GEMMs
//
// One-phase cells (kResetBeforeMatmul == false) provide, for one hidden unit j:
//
//   forward(ax, ah, h_prev, c_prev, saved, h, c)
//     ax[G]     in   input pre-activations  W_ih x + b_ih   (gate g at ax[g])
//     ah[G]     in   recurrent pre-activations W_hh h + b_hh
//     h_prev, c_prev in  previous state of unit j (0 when the cell does not read it)
//     saved[kSaved] out  what backward needs
//     h, c      out  new state of unit j (h before any projection)
//
//   backward(saved, h_prev, c_prev, c, dh, dc, dax, dah, dh_prev)
//     dh        in   dL/dh_t of unit j (all paths: output, next step, projection undone)
//     dc        in/out  dL/dc_t in, dL/dc_{t-1} out
//     dax[G]    out  dL/d(input pre-activations)
//     dah[G]    out  dL/d(recurrent pre-activations) (== dax unless kSplitRecurrentGrad)
//     dh_prev   out  the part of dL/dh_{t-1} that does not go through W_hh (GRU: z·dh)
//
// Two-phase cells (kResetBeforeMatmul) split both directions at the second GEMM; see gru.h.
// Cells with kCanProject also provide raw_output(saved, c), the h before W_hr, which backward
// recomputes instead of storing.
//
// The engine guarantees: every pointer is valid for G (or kSaved) elements; ax/ah/saved are
// distinct local arrays; functions are called once per (t, b, j) for active steps only.
#pragma once

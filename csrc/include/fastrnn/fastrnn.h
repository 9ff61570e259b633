// SPDX-License-Identifier: MIT
// fastrnn.h — umbrella header and GENERAL NOTES for the C++ core. It declares nothing of its
// own; it is where a reader starts (then cells/lstm.h, engine.h, cpu/engine.cpp).
//
// GENERAL NOTES
// -------------
// Shape legend (identical in docs/design.md and reference.py):
//
//   T = sequence length (time steps)   B = batch size        I = input size
//   H = hidden size                    P = projection size (LSTM only; 0 = none, then the output size is H)
//   G = gates per cell (LSTM 4: i,f,g,o · GRU 3: r,z,n · RNN 1)
//   D = directions (1 or 2)            L = layers
//
// Hout is the size of the hidden state that is output and fed back: P when P > 0, else H.
//
// Layout rules, everywhere in csrc/:
//   * every array is dense row-major; "[T,B,G*H]" means T*B*G*H contiguous elements, last
//     index fastest. The Python layer makes inputs dense before they reach C++.
//   * sequences are time-major ([T,B,...]); batch_first is a Python-side view.
//   * gate blocks are stacked along the first weight axis in PyTorch/cuDNN order: weights
//     are [G*H, K] and gate g of hidden unit j is row g*H + j.
//   * sizes and offsets are int64_t; BLAS receives 32-bit sizes only after a range check.
//   * no pointer argument is ever freed or resized by the core; outputs are written, never
//     accumulated into, unless a comment says "+=".

#pragma once

#include "fastrnn/platform.h"
#include "fastrnn/activations.h"
#include "fastrnn/cells/lstm.h"
#include "fastrnn/cells/gru.h"
#include "fastrnn/cells/rnn.h"
#include "fastrnn/problem.h"
#include "fastrnn/dropout.h"
#include "fastrnn/engine.h"
#include "fastrnn/stack.h"

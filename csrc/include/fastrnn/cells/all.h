// SPDX-License-Identifier: MIT
// cells/all.h — every cell, and the one switch from a runtime CellKind to a Cell type, shared
// by every backend's entry point (STYLE 6: resolved once, at the engine entry).
#pragma once

#include <stdexcept>

#include "fastrnn/cells/gru.h"
#include "fastrnn/cells/lstm.h"
#include "fastrnn/cells/rnn.h"
#include "fastrnn/platform.h"
#include "fastrnn/problem.h"

namespace fastrnn {

// f(Cell{}) for the cell of `kind`.
template <class F>
decltype(auto) with_cell(CellKind kind, F&& f) {
  switch (kind) {
    case CellKind::kLstm: return f(Lstm{});
    case CellKind::kGru: return f(Gru{});
    case CellKind::kGruResetBefore: return f(GruResetBefore{});
    case CellKind::kRnnTanh: return f(RnnTanh{});
    case CellKind::kRnnRelu: return f(RnnRelu{});
  }
  throw std::invalid_argument(check_msg("cell: unknown cell kind ", int(kind)));
}

}  // namespace fastrnn

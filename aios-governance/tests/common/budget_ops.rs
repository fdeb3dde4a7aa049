//! Random sequences of budget operations for the model-based tests of every ledger (included
//! with `#[path]` by each ledger's tests).

use aios_governance::testing::BudgetOp;
use proptest::prelude::*;

pub fn budget_op() -> impl Strategy<Value = BudgetOp> {
    prop_oneof![
        1 => (any::<bool>(), 0i64..120).prop_map(|(run, limit)| BudgetOp::Limit { run, limit }),
        4 => (
            any::<bool>(),
            0i64..40,
            prop::option::of(0u8..4),
            prop::option::of(0u16..30),
        )
            .prop_map(|(run, cost, key, ttl_secs)| BudgetOp::Reserve {
                run,
                cost,
                key,
                ttl_secs,
            }),
        3 => (0usize..64, 0i64..50).prop_map(|(nth, actual)| BudgetOp::Commit { nth, actual }),
        1 => (0usize..64).prop_map(|nth| BudgetOp::Release { nth }),
        2 => prop_oneof![0u32..20, Just(3_600u32)].prop_map(|secs| BudgetOp::Advance { secs }),
        1 => Just(BudgetOp::Expire),
        1 => Just(BudgetOp::ReleaseRun),
        2 => Just(BudgetOp::Usage),
    ]
}

/// Sequences that set the organisation's budget first, so most steps do something.
pub fn budget_ops() -> impl Strategy<Value = Vec<BudgetOp>> {
    (20i64..120, prop::collection::vec(budget_op(), 1..80)).prop_map(|(limit, mut ops)| {
        ops.insert(0, BudgetOp::Limit { run: false, limit });
        ops
    })
}

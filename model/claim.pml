/*
 * sendguard: the claim protocol of ONE logical send, as a Promela model for spin.
 * model/README.md says what it proves, what it assumes, and how it maps to the code;
 * tests/unit/test_model.py checks the variants (python tests/unit/test_model.py prints the trails).
 *
 *   Owner      an app client; each of its requests (ATTEMPTS) is a guarded send with a fresh
 *              claim token: SendGate.handle -> SendGuard.handle (answer_pending, claim, decide)
 *              -> _forward -> _settle. The Late duplicate is one more Owner.
 *   Journal    an instance's settlement journal retrying what the store did not accept
 *   Prober     an instance's outage policy (StoreFailover.store_changed, merge on recovery)
 *   Failover   the replica promoted: writes it had not received are lost
 *   Outage     the shared store unreachable for a while
 *   Late       one more duplicate once everything else has settled (the no-stuck check)
 * A crash (kill -9 of an instance) is a step of the Owner or Journal that is running there;
 * the store scripts (proxy/store/scripts.py) are atomic steps: run_op.
 *
 * Properties, all assertions (pan reports "assertion violated (...)"):
 *   P1 at most one upstream create     assert(creates <= 1)
 *   P2 exclusive claim                 assert(nsending == 0) when an owner may start sending:
 *                                      no other owner holds a live claim (P2_CHECK)
 *   P3 no stuck state                  at quiescence no claim's holder can still send (so its
 *                                      lease ends): assert(!busy[..]); after the next duplicate
 *                                      the record is DONE, UNKNOWN or released:
 *                                      assert(st[PRI] != INFLIGHT)
 *   P4 no outcome lost                 what a live instance settled on the shared store is
 *                                      there at quiescence: assert(... tok[PRI] ...) (not with
 *                                      FAILOVER: WAIT covers claims only)
 *   and pan's own check: no invalid end state (nothing blocks forever).
 */

/* ------------------------------------------------------------------ configuration */
#ifndef OWNERS
#define OWNERS 3          /* app clients sending the same logical message (2..3) */
#endif
#ifndef ATTEMPTS
#define ATTEMPTS 1        /* requests per client: it retries after 409/502/503/504/5xx */
#endif
#ifndef FAULTS
#define FAULTS 2          /* store calls that fail in the whole run (answer lost / never ran) */
#endif
#ifndef CRASHES
#define CRASHES 1         /* 0 or 1 instance crash */
#endif
#ifndef MAXPOLL
#define MAXPOLL 1         /* re-polls of someone else's running claim before 409 in-flight */
#endif
#ifndef SPREAD
#define SPREAD 1          /* 1: the last client's requests reach instance 1, the others' instance 0
                             0: every request reaches instance 0 (the app of one sidecar) */
#endif
#ifndef OUTAGE
#define OUTAGE 0          /* the shared store goes down once, and comes back */
#endif
#ifndef LOCAL_MODE
#define LOCAL_MODE 0      /* instance 0's on_store_error: 1 = local, 0 = closed (instance 1: closed) */
#endif
#ifndef FAILOVER
#define FAILOVER 0        /* one failover, losing what the replica has not received */
#endif
#ifndef MIN_REPLICAS
#define MIN_REPLICAS 0    /* store_min_replicas: 1 = WAIT for the replica before forwarding */
#endif
/* The three fixes this model found (FIXED=1, the default, sets all three; the code has them:
   settlement.py keeps every owed outcome, gate.py answers 409 for a send still in flight on
   the shared store, and merges only once the journal owes the shared store nothing):
   JOURNAL_KEEPS_ALL   SettlementJournal._keep keeps every pending outcome until the store
                       accepts it (the strongest answers duplicates); as written it keeps one
                       per send and instance: a newer one stops the older one's retries
   LOCAL_SEES_SHARED   the instance remembers its own sends guarded by the shared store while
                       they run, and, until it is back on the shared store, those that ended
                       and the journal outcomes written while it was in local mode; a request
                       guarded by the local store is answered 409 meanwhile (today the local
                       store knows nothing of them)
   MERGE_AFTER_JOURNAL the outage merge runs only once this instance's journal owes the shared
                       store nothing (today a release still pending there lets the shared
                       in-flight record "win" the merge, and then disappear) */
#ifndef FIXED
#define FIXED 1           /* the code has the three fixes since they were found; 0 = before */
#endif
#ifndef JOURNAL_KEEPS_ALL
#define JOURNAL_KEEPS_ALL FIXED
#endif
#ifndef LOCAL_SEES_SHARED
#define LOCAL_SEES_SHARED FIXED
#endif
#ifndef MERGE_AFTER_JOURNAL
#define MERGE_AFTER_JOURNAL FIXED
#endif
/* Deliberately broken variants: each must be rejected with a counterexample. */
#ifndef BROKEN_RELEASE_AMBIGUOUS
#define BROKEN_RELEASE_AMBIGUOUS 0 /* an ambiguous answer releases the claim instead of UNKNOWN */
#endif
#ifndef BROKEN_STALE_TAKEOVER
#define BROKEN_STALE_TAKEOVER 0    /* a stale claim is claimed afresh instead of marked UNKNOWN */
#endif
#ifndef BROKEN_NO_MERGE
#define BROKEN_NO_MERGE 0          /* back from local mode without merging the outage records */
#endif
#ifndef BROKEN_MERGE_NO_WAIT
#define BROKEN_MERGE_NO_WAIT 0     /* merge while a local send may still be sending */
#endif
/* 0: leave P2 unchecked, to follow a P2 counterexample on to the duplicate create it allows */
#ifndef CHECK_EXCLUSIVE
#define CHECK_EXCLUSIVE 1
#endif
#if CHECK_EXCLUSIVE
#define P2_CHECK assert(nsending == 0)
#else
#define P2_CHECK skip
#endif
/* Not broken, only weaker: a lease that may end while its owner can still send. */
#ifndef SHORT_LEASE
#define SHORT_LEASE 0
#endif

/* ------------------------------------------------------------------ constants */
#define NONE     0   /* no record: never claimed, or released */
#define INFLIGHT 1
#define DONE     2
#define UNKNOWN  3

#define PRI 0        /* the shared store (its master) */
#define REP 1        /* the master's replica */
#define LOC 2        /* instance 0's private outage store (on_store_error=local) */
#define NOGUARD 3    /* no store guards the send (closed, merging): 503 */

#define M_SHARED 0
#define M_LOCAL  1
#define M_CLOSED 2

mtype = { CLAIM, COMPLETE, MARK_UNKNOWN, RELEASE, MARK_STALE, MERGE_RECORD };
#define OP_CLAIM    CLAIM
#define OP_COMPLETE COMPLETE
#define OP_MARK     MARK_UNKNOWN   /* require_expired=0: the owner's own ambiguous outcome */
#define OP_RELEASE  RELEASE
#define OP_STALE    MARK_STALE     /* MARK_UNKNOWN require_expired=1: someone else's claim */
#define OP_MERGE    MERGE_RECORD

#define R_EXISTS  0
#define R_CLAIMED 1

/* how the upstream call ended (proxy/guard/outcome.py) */
mtype = { NOT_SENT, DEFINITE, AMBIGUOUS };

#define NT (OWNERS * ATTEMPTS)   /* request tokens 1..NT; LATE_T is the Late duplicate's */
#define LATE_T (NT + 1)
#define MAXT 6

#if SPREAD
#define INST_OF(i) (((i) == OWNERS - 1) -> 1 : 0)
#else
#define INST_OF(i) 0
#endif
#define INST_T(v) (((v) == LATE_T) -> 2 : INST_OF(((v) - 1) / ATTEMPTS))

#if SHORT_LEASE
#define LEASE_CAN_END(v) 1
#else
/* assumption: a lease outlives the longest time its owner can still be sending */
#define LEASE_CAN_END(v) (!busy[v])
#endif

/* ------------------------------------------------------------------ state */
/* The record's fields (proxy/store/codec.py RecordField): st is 's', tok is 't', exp compares
   'l' with the store's TIME; the answer, meta and indexes do not decide anything and are left out. */
byte st[3];              /* the record, per store copy PRI / REP / LOC: state */
byte tok[3];             /* its claim token */
bool exp[3];             /* its lease has ended (the store's TIME is past 'l') */
byte faults = FAULTS;
bool up = 1;             /* the shared store is reachable */
byte epoch;              /* failovers so far: a WAIT's connection does not survive one */

byte mode[3];            /* per instance; instance 2 is the Late duplicate's */
bool merging[3];
bool late[3];            /* a late merge pass is due */
bool alive[3] = 1;
byte lactive;            /* sends instance 0 is guarding with its local store */
byte lpre;               /* ... of which may still send upstream */

mtype j_act[MAXT + 2];   /* settlement journal: the outcome pending for token v */
byte j_sto[MAXT + 2];    /* the store it is owed to */
bool busy[MAXT + 2];     /* token v's owner may still send */
mtype dec[MAXT + 2];     /* the outcome token v's owner settled on the shared store */
byte reg[MAXT + 2];      /* LOCAL_SEES_SHARED: 1 token v's request is guarded by the shared
                            store, 2 it ended so while its instance was in local mode */

byte creates;            /* Twilio: messages created for this logical send */
byte nsending;           /* owners between "may forward" and the end of their upstream call */
byte finished;
bool outage_over, failover_over;
byte crashes = CRASHES;

/* ------------------------------------------------------------------ store scripts */
#if FAILOVER
/* asynchronous replication: a write reaches the replica now, or later with a later write */
inline replicate() {
  if
  :: st[REP] != st[PRI] || tok[REP] != tok[PRI] || exp[REP] != exp[PRI] ->
     st[REP] = st[PRI]; tok[REP] = tok[PRI]; exp[REP] = exp[PRI]
  :: else
  fi
}
#define MAY_REPLICATE(x) if :: x == PRI -> if :: replicate() :: skip fi :: else fi
#else
#define MAY_REPLICATE(x) skip
#endif

/* the store clock: a reader may find that the lease of the record has ended meanwhile */
inline clock(x) {
  if
  :: st[x] == INFLIGHT && !exp[x] && LEASE_CAN_END(tok[x]) -> exp[x] = 1
  :: true
  fi
}

/* One script run on store copy x with token tk, all in one atomic step. Answer in r (CLAIM's
   'exists' also in rst/rtok/rexp). MERGE_RECORD writes mst (export_records' copy) as tk. */
inline run_op(op, x, tk) {
  if
  :: op == OP_CLAIM ->
     clock(x);
     if
     :: st[x] == NONE ->
        st[x] = INFLIGHT; tok[x] = tk; exp[x] = 0; busy[tk] = 1; r = R_CLAIMED; ep = epoch;
        dec[tk] = 0                        /* a new claim: what tk settled before is history */
#if BROKEN_STALE_TAKEOVER
     :: st[x] == INFLIGHT && exp[x] ->
        tok[x] = tk; exp[x] = 0; busy[tk] = 1; r = R_CLAIMED; ep = epoch; dec[tk] = 0
     :: st[x] != NONE && !(st[x] == INFLIGHT && exp[x]) ->
#else
     :: st[x] != NONE ->
#endif
        r = R_EXISTS; rst = st[x]; rtok = tok[x]; rexp = exp[x]
     fi
  :: op == OP_COMPLETE ->               /* 1 completed, 2 already, 0 not the owner */
     if
     :: tok[x] != tk -> r = 0
     :: tok[x] == tk && st[x] == DONE -> r = 2
     :: tok[x] == tk && st[x] != DONE -> st[x] = DONE; r = 1
     fi
  :: op == OP_RELEASE ->                /* 1 released, 0 not the owner, or done */
     if
     :: tok[x] == tk && st[x] != DONE -> st[x] = NONE; tok[x] = 0; exp[x] = 0; r = 1
     :: else -> r = 0
     fi
  :: op == OP_MARK || op == OP_STALE -> /* 1 marked, 2 already unknown, 0 not applicable */
     if
     :: op == OP_STALE -> clock(x)
     :: else
     fi;
     if
     :: tok[x] != tk -> r = 0
     :: tok[x] == tk && st[x] == UNKNOWN -> r = 2
     :: tok[x] == tk && st[x] != UNKNOWN && st[x] != INFLIGHT -> r = 0
     :: tok[x] == tk && st[x] == INFLIGHT && op == OP_STALE && !exp[x] -> r = 0
     :: tok[x] == tk && st[x] == INFLIGHT && (op == OP_MARK || exp[x]) -> st[x] = UNKNOWN; r = 1
     fi
  :: op == OP_MERGE ->   /* an existing record wins, except an in-flight copy of the same claim */
     if
     :: st[x] != NONE && (st[x] != INFLIGHT || mst == INFLIGHT || tok[x] != tk) -> r = 0
     :: else -> st[x] = mst; tok[x] = tk; exp[x] = 0; r = 1
     fi
  fi;
  MAY_REPLICATE(x)
}

/* ------------------------------------------------------------------ settlement journal */
/* SettlementJournal._keep */
inline keep(tk, op, x) {
#if !JOURNAL_KEEPS_ALL
  /* as written today: one slot per send; the older outcome's retry stops (done.set()) */
  u = 1;
  do
  :: u <= NT -> if :: u != tk && INST_T(u) == inst -> j_act[u] = 0; j_sto[u] = 0 :: else fi; u++
  :: u > NT -> break
  od;
  u = 0;
#endif
  j_act[tk] = op; j_sto[tk] = x;
  printf("EV   instance %d keeps %e(token %d) in its journal\n", inst, op, tk)
}

/* journal.pending(ref): what a duplicate on this instance is answered from, the strongest
   pending outcome if there are several (COMPLETE > MARK_UNKNOWN > RELEASE) */
inline pending_of() {
  jt = 0; jact = 0; jsto = 0; u = 1;
  do
  :: u <= NT ->
     if
     :: INST_T(u) == inst && j_act[u] != 0 &&
        (jact == 0 || j_act[u] == OP_COMPLETE || (j_act[u] == OP_MARK && jact == OP_RELEASE)) ->
        jt = u; jact = j_act[u]; jsto = j_sto[u]
     :: else
     fi;
     u++
  :: u > NT -> break
  od;
  u = 0
}

/* ------------------------------------------------------------------ a guarded send */
/* One Owner is one app client; each request of it (ATTEMPTS) is a guarded send with a fresh
   token. Each iteration of its loop is ONE atomic step holding one interaction with the
   store or with Twilio, plus the local decisions that follow it synchronously (no await in
   between). pc says which step is next. */
#define P_START 1   /* SendGate.handle: the guard; answer_pending; then claim */
#define P_CALL  2   /* a store call (op, x, tk); ret says what it was for */
#define P_WAIT  3   /* store_min_replicas: WAIT for the replica */
#define P_SEND  4   /* the upstream call */
#define P_GONE  5

#define K_RETRY_NOW 1   /* journal.retry_now of a pending release */
#define K_CLAIM     2
#define K_OWN       3   /* release of our own claim found twice */
#define K_STALE     4   /* MARK_STALE of someone else's expired claim */
#define K_SETTLED   5   /* _settle/_release: the request is answered after it */

/* kill -9 of instance i (not of one in local mode, nor while sends it guarded by its local
   store run or await the late merge: its private store would die with it, the documented
   limit of `local`). Every request on it dies where it is (Owner's unless), and
   so does its journal. Taken where it matters: before or after the upstream call, and while
   the journal holds an outcome. */
#define CAN_CRASH(i) (crashes > 0 && (i) < 2 && alive[i] && mode[i] == M_SHARED && !merging[i] && !late[i] && \
                      ((i) != 0 || lactive == 0))
#define CRASH(i) crashes--; printf("EV instance %d crashes\n", i); alive[i] = 0

#if LOCAL_SEES_SHARED
#define REGISTER reg[t] = 1
#define RG(v) ((v) <= NT && (v) != t && INST_T(v) == inst && reg[v] != 0)
#define SHARED_INFLIGHT (RG(1) || RG(2) || RG(3) || RG(4) || RG(5) || RG(6))
#define REMEMBER_SETTLED if :: x == PRI && op != OP_RELEASE && (mode[inst] != M_SHARED || merging[inst]) -> reg[t] = 2 :: else fi
#else
#define REGISTER skip
#define REMEMBER_SETTLED skip
#endif

/* the next store call */
#define CALL(o, sx, stk, k) op = o; x = sx; tk = stk; ret = k; pc = P_CALL
/* SendGuard._settle / _release: try now, else the journal keeps it */
#define SETTLE(o) dec_on = (g == PRI); keep_on = 1; CALL(o, g, t, K_SETTLED)
#define CLAIM_AGAIN CALL(OP_CLAIM, g, t, K_CLAIM)

/* the request is answered: forget it, next request (or gone) */
inline answered() {
  if
  :: lg -> if :: pre -> lpre--; pre = 0 :: else fi; lactive--; lg = 0
  :: else
  fi;
  g = 0; r = 0; rst = 0; rtok = 0; rexp = 0; ok = 0; iter = 0; ep = 0; outcome = 0;
  jt = 0; jact = 0; jsto = 0; op = 0; x = 0; tk = 0; ret = 0; dec_on = 0; keep_on = 0;
  clear_on = 0; tries = 0; ran = 0;
  reg[t] = ((reg[t] != 0 && (mode[inst] != M_SHARED || merging[inst])) -> 2 : 0);
  pc = ((fin || a == ATTEMPTS) -> P_GONE : P_START)
}

proctype Owner(byte me) {
  /* bit fields: a smaller state vector makes the search faster */
  unsigned inst : 2, pc : 3, a : 2, t : 3, g : 2, r : 2, rst : 2, rtok : 3, tries : 1;
  unsigned iter : 2, ep : 2, u : 3, jt : 3, jsto : 2, mst : 2, x : 2, tk : 3, ret : 3;
  mtype jact, outcome, op;
  bool rexp, ok, ran, fin, sending, lg, pre, dec_on, keep_on, clear_on;

  inst = (me == OWNERS -> 2 : INST_OF(me));
  pc = P_START;
  {
    do
    :: atomic { pc == P_START ->
         /* SendGate.handle: the guard (StoreFailover.guard), then answer_pending: no await */
         t = (me == OWNERS -> LATE_T : me * ATTEMPTS + a + 1);
         a++;
         if
         :: merging[inst] || mode[inst] == M_CLOSED -> g = NOGUARD
         :: !merging[inst] && mode[inst] == M_SHARED -> g = PRI; REGISTER
         :: !merging[inst] && mode[inst] == M_LOCAL ->
            g = LOC; lg = 1; pre = 1; lactive++; lpre++
         fi;
         pending_of();
         printf("EV request token %d at instance %d, guarded by store %d, journal: %e\n",
                t, inst, g, jact);
         if
         :: jact == OP_COMPLETE -> fin = 1; answered()           /* replayed from memory */
         :: jact == OP_MARK -> answered()                        /* 409 unknown-unsettled */
#if LOCAL_SEES_SHARED
         :: jact != OP_COMPLETE && jact != OP_MARK && g == LOC && SHARED_INFLIGHT ->
            answered()                                 /* 409: in flight on the shared store */
         :: jact == OP_RELEASE && jsto == (g == NOGUARD -> PRI : g) && !(g == LOC && SHARED_INFLIGHT) ->
            clear_on = 1; CALL(OP_RELEASE, jsto, jt, K_RETRY_NOW)
         :: (jact == 0 || (jact == OP_RELEASE && jsto != (g == NOGUARD -> PRI : g))) &&
            !(g == LOC && SHARED_INFLIGHT) ->
            if
            :: g == NOGUARD -> answered()
            :: else -> CLAIM_AGAIN
            fi
#else
         :: jact == OP_RELEASE && jsto == (g == NOGUARD -> PRI : g) ->
            clear_on = 1; CALL(OP_RELEASE, jsto, jt, K_RETRY_NOW) /* journal.retry_now */
         :: jact == 0 || (jact == OP_RELEASE && jsto != (g == NOGUARD -> PRI : g)) ->
            if
            :: g == NOGUARD -> answered()                        /* 503 store-unavailable */
            :: else -> CLAIM_AGAIN
            fi
#endif
         fi
       }
    :: atomic { pc == P_CALL ->
         /* the store call (see the comment above run_op for its faults) */
         if
         :: dec_on -> dec[tk] = op; dec_on = 0
         :: else
         fi;
         if
         :: x != LOC && !up -> ok = 0; ran = 0
         :: x == LOC || up ->
            if
            :: ok = 1; ran = 1
            :: x != LOC && faults > 0 -> faults--; ok = 0; ran = 1  /* answer lost */
            :: x != LOC && faults > 0 -> faults--; ok = 0; ran = 0  /* never ran */
            fi
         fi;
         if
         :: ran -> run_op(op, x, tk)
         :: else
         fi;
         printf("EV %e(token %d) on store %d: %d\n", op, tk, x, (ok -> r : 9));
         if
         :: !ok && ran && tries == 0 -> tries = 1   /* dropped connection: redis-py retries once */
         :: true ->                                 /* answered, or StoreError (a timeout
                                                       is not retried) */
            tries = 0; ran = 0;
            if
            :: !ok && keep_on -> keep(tk, op, x)       /* StoreError: SettlementJournal._keep */
            :: ok && clear_on && j_act[tk] == op && j_sto[tk] == x ->
               j_act[tk] = 0; j_sto[tk] = 0               /* SettlementJournal._settled */
            :: else
            fi;
            dec_on = 0; keep_on = 0; clear_on = 0;
            /* what the answer means for this request */
            if
            :: ret == K_RETRY_NOW && ok ->
               jt = 0; jact = 0; jsto = 0;
               if
               :: g == NOGUARD -> answered()                   /* 503 */
               :: else -> CLAIM_AGAIN
               fi
            :: ret == K_RETRY_NOW && !ok -> answered()        /* 503 release-unsettled */
            :: ret == K_CLAIM && !ok ->
               busy[t] = 0; SETTLE(OP_RELEASE)                 /* _claim: release it whole, 503 */
            :: ret == K_CLAIM && ok && r == R_CLAIMED ->
#if MIN_REPLICAS
               if
               :: g == PRI -> pc = P_WAIT
               :: else -> P2_CHECK; nsending = 1; sending = 1; pc = P_SEND
               fi
#else
               P2_CHECK; nsending = 1; sending = 1; pc = P_SEND  /* P2 */
#endif
            :: ret == K_CLAIM && ok && r == R_EXISTS && rst == INFLIGHT && rtok == t ->
               /* our own claim, run twice (answer lost, connection retried): release, again */
               busy[t] = 0; dec_on = (g == PRI); keep_on = 1; CALL(OP_RELEASE, g, t, K_OWN)
            :: ret == K_CLAIM && ok && r == R_EXISTS && rst == DONE -> fin = 1; answered()  /* REPLAY */
            :: ret == K_CLAIM && ok && r == R_EXISTS && rst == UNKNOWN -> answered()       /* 409 */
            :: ret == K_CLAIM && ok && r == R_EXISTS && rst == INFLIGHT && rtok != t && rexp ->
               CALL(OP_STALE, g, rtok, K_STALE)                /* MARK_STALE */
            :: ret == K_CLAIM && ok && r == R_EXISTS && rst == INFLIGHT && rtok != t && !rexp ->
               if                                              /* WAIT (poll) */
               :: iter < MAXPOLL -> iter++; CLAIM_AGAIN
               :: else -> answered()                           /* 409 in-flight */
               fi
            :: ret == K_OWN || ret == K_STALE ->
               if
               :: ok && iter < 3 -> iter++; CLAIM_AGAIN        /* claim afresh / re-read */
               :: else -> answered()                           /* 503 */
               fi
            :: ret == K_SETTLED -> answered()
            fi
         fi
       }
#if MIN_REPLICAS
    :: atomic { pc == P_WAIT && epoch == ep ->     /* WAIT 1 acknowledged: the replica has it */
         replicate(); printf("EV WAIT: the replica holds token %d's claim\n", t);
         P2_CHECK; nsending = 1; sending = 1; pc = P_SEND }
    :: atomic { pc == P_WAIT ->                    /* not in time / connection gone: 503 */
         printf("EV WAIT for token %d timed out\n", t);
         busy[t] = 0; SETTLE(OP_RELEASE) }
#endif
    :: atomic { pc == P_SEND ->
         /* _forward: the upstream call, within the total deadline; the claim is held till its end */
         if
         :: outcome = NOT_SENT
         :: creates++; outcome = DEFINITE
         :: creates++; outcome = AMBIGUOUS
         :: outcome = AMBIGUOUS
         :: CAN_CRASH(inst) -> CRASH(inst)                         /* before sending */
         fi;
         printf("EV token %d upstream: %e, creates=%d\n", t, outcome, creates);
         assert(creates <= 1);                                      /* P1 */
         if
         :: outcome != 0 && CAN_CRASH(inst) -> CRASH(inst)         /* after, before settling */
         :: true
         fi;
         nsending = 0; sending = 0; busy[t] = 0;
         if :: pre -> lpre--; pre = 0 :: else fi;
         /* settle(AttemptEnd) -> _settle (proxy/guard/outcome.py) */
         if
         :: outcome == NOT_SENT -> SETTLE(OP_RELEASE)
         :: outcome == DEFINITE -> fin = 1; SETTLE(OP_COMPLETE)
#if BROKEN_RELEASE_AMBIGUOUS
         :: outcome == AMBIGUOUS -> SETTLE(OP_RELEASE)
#else
         :: outcome == AMBIGUOUS -> SETTLE(OP_MARK)
#endif
         :: outcome == 0 -> skip                                   /* crashed */
         fi
       }
    :: pc == P_GONE -> break
    od
  } unless {
    atomic { !alive[inst] ->                 /* kill -9: nothing of this request survives */
      printf("EV token %d dies with instance %d\n", t, inst);
      if :: sending -> nsending = 0 :: else fi;
      if :: lg -> lactive--; if :: pre -> lpre-- :: else fi :: else fi;
      busy[t] = 0; reg[t] = 0
    }
  };
  atomic {
    finished++;
    pc = 0; t = 0; a = 0; fin = 0; g = 0; r = 0; rst = 0; rtok = 0; rexp = 0; ok = 0; iter = 0;
    ep = 0; outcome = 0; sending = 0; op = 0; x = 0; tk = 0; ret = 0; lg = 0; pre = 0;
    dec_on = 0; keep_on = 0; clear_on = 0; jt = 0; jact = 0; jsto = 0; tries = 0; ran = 0
  }
}

/* SettlementJournal._retry: one write of a pending outcome, as one step (picked, run, and on
   an answer _settled). A lost answer or a refused call leaves it pending: tried again later. */
#define ELIG(v) ((v) <= NT && INST_T(v) == inst && j_act[v] != 0 && (j_sto[v] == LOC || up))
#define ANY_ELIG (ELIG(1) || ELIG(2) || ELIG(3) || ELIG(4) || ELIG(5) || ELIG(6))
proctype Journal(byte inst) {
  unsigned t : 3, x : 2, r : 2, rst : 2, rtok : 3, ep : 2, mst : 2;
  mtype op;
  bool rexp, ok;
  {
end_j:
    do
    :: atomic {
         ANY_ELIG ->
         if
         :: ELIG(1) -> t = 1
         :: ELIG(2) -> t = 2
         :: ELIG(3) -> t = 3
         :: ELIG(4) -> t = 4
         :: ELIG(5) -> t = 5
         :: ELIG(6) -> t = 6
         fi;
         op = j_act[t]; x = j_sto[t];
         if
         :: ok = 1
         :: x != LOC && faults > 0 -> faults--; ok = 0      /* answer lost */
         fi;
         run_op(op, x, t);
         printf("EV journal of instance %d: %e(token %d) on store %d: %d\n", inst, op, t, x, (ok -> r : 9));
         if
         :: ok -> j_act[t] = 0; j_sto[t] = 0; REMEMBER_SETTLED
         :: else
         fi;
         t = 0; op = 0; x = 0; ok = 0; r = 0; rst = 0; rtok = 0; rexp = 0; ep = 0
       }
    :: atomic { ANY_ELIG && CAN_CRASH(inst) -> CRASH(inst) }   /* with an outcome pending */
    od
  } unless { !alive[inst] }
}

/* ------------------------------------------------------------------ environment */
#if FAILOVER
proctype Failover() {
  if
  :: atomic {
       st[PRI] = st[REP]; tok[PRI] = tok[REP]; exp[PRI] = exp[REP]; epoch++;
       printf("EV failover: the replica (state %d, token %d) is the master now\n", st[REP], tok[REP])
     }
  :: skip
  fi;
  failover_over = 1
}
#endif

proctype Outage() {
  if
  :: atomic { up = 0; printf("EV the shared store is down\n") };
     atomic { up = 1; printf("EV the shared store is back\n") }
  :: skip
  fi;
  outage_over = 1
}

/* merge_outage_records as one step: export the local record, MERGE_RECORD it into the shared
   store (answered, answer lost, or refused: then the switch back is retried) */
inline merge_pass() {
  atomic {
    mst = st[LOC]; t = tok[LOC];
    if
    :: mst == NONE -> ok = 1
    :: mst != NONE ->
       if
       :: ok = 1; ran = 1
       :: faults > 0 -> faults--; ok = 0; ran = 1
       :: faults > 0 -> faults--; ok = 0; ran = 0
       fi;
       if
       :: ran -> run_op(OP_MERGE, PRI, t)
       :: else
       fi;
       printf("EV instance %d merges (state %d, token %d): %d\n", inst, mst, t, (ok -> r : 9))
    fi;
    mst = 0; t = 0; ran = 0; r = 0
  }
}

/* Scope of `local` (SPEC 3.4: dedup within this instance, outage records merged back): the
   local store cannot know a send that had already settled on the shared store before the
   outage began; its retry during the outage is outside the promise, so the model lets the
   outage begin only before that. */
#define IN_SCOPE(pol) ((pol) != M_LOCAL || (st[PRI] != DONE && st[PRI] != UNKNOWN))
#if LOCAL_SEES_SHARED
#define FORGET(v) if :: INST_T(v) == inst && reg[v] == 2 -> reg[v] = 0 :: else fi
#define FORGET_REMEMBERED FORGET(1); FORGET(2); FORGET(3); FORGET(4); FORGET(5); FORGET(6)
#else
#define FORGET_REMEMBERED skip
#endif

#if MERGE_AFTER_JOURNAL
#define OW(v) ((v) > NT || INST_T(v) != inst || j_act[v] == 0 || j_sto[v] != PRI)
#define JOURNAL_OWES_NOTHING (OW(1) && OW(2) && OW(3) && OW(4) && OW(5) && OW(6))
#else
#define JOURNAL_OWES_NOTHING 1
#endif

/* StoreFailover.store_changed on the prober's word (instance inst, policy pol) */
proctype Prober(byte inst; byte pol) {
  byte t, r, rst, rtok, ep, mst;
  bool rexp, ok, ran, settled, first;
end_p:
  do
  :: atomic { alive[inst] && mode[inst] == M_SHARED && !up && IN_SCOPE(pol) -> mode[inst] = pol;
              printf("EV instance %d: store down, mode %d\n", inst, pol) }
  :: atomic { mode[inst] == M_CLOSED && up -> mode[inst] = M_SHARED;
              printf("EV instance %d: store up, mode shared\n", inst) }
  :: atomic { mode[inst] == M_LOCAL && up && !merging[inst] && JOURNAL_OWES_NOTHING -> merging[inst] = 1 }
     /* _local_sends_settled: wait for the local sends, at most settle_after (= the lease) */
     if
     :: lactive == 0 -> settled = 1
#if BROKEN_MERGE_NO_WAIT
     :: lactive > 0 -> settled = 0
#else
     /* assumption: once settle_after has passed, no local send can still be sending */
     :: lactive > 0 && lpre == 0 -> settled = 0
#endif
     fi;
     first = 1;
     goto pass
  :: late[inst] && up && !merging[inst] ->   /* _schedule_late_merge: a few tries */
     first = 0;
     goto pass
  od;
pass:
#if BROKEN_NO_MERGE
  ok = 1;
#else
  merge_pass();
#endif
  if
  :: first && ok -> atomic { mode[inst] = M_SHARED; merging[inst] = 0; late[inst] = !settled;
                             FORGET_REMEMBERED;
                             printf("EV instance %d: mode shared, late merge due=%d\n", inst, !settled) }
  :: first && !ok -> merging[inst] = 0        /* returned False: still local, try again */
  :: !first && ok -> late[inst] = 0
  :: !first && !ok -> skip                    /* tried again */
  :: !first && !ok -> late[inst] = 0          /* gave up */
  fi;
  settled = 0; ok = 0; first = 0;
  goto end_p
}

/* ------------------------------------------------------------------ the checks */
#define JE(v) ((v) > NT || j_act[v] == 0 || !alive[INST_T(v)])
#define QUIESCENT (finished == OWNERS && outage_over && failover_over && \
                   !merging[0] && !late[0] && mode[0] == M_SHARED && mode[1] == M_SHARED && \
                   JE(1) && JE(2) && JE(3) && JE(4) && JE(5) && JE(6))

/* P4: what a live instance settled on the shared store is there */
inline outcomes_kept() {
  u = 1;
  do
  :: u <= NT ->
     if
     :: alive[INST_T(u)] && dec[u] == OP_COMPLETE -> assert(st[PRI] == DONE && tok[PRI] == u)
     :: alive[INST_T(u)] && dec[u] == OP_MARK -> assert(st[PRI] == UNKNOWN && tok[PRI] == u)
     :: alive[INST_T(u)] && dec[u] == OP_RELEASE -> assert(tok[PRI] != u)
     :: else
     fi;
     u++
  :: u > NT -> break
  od;
  u = 0
}

/* Everything else has settled. P3: no claim's holder can still be sending, so the store clock
   passes its lease; then one more duplicate (P1 once more), after which the record must be
   DONE, UNKNOWN or released, never left in flight. */
proctype Late() {
  byte u;
  atomic {
    QUIESCENT ->
    printf("EV quiescent: shared record state %d, token %d; creates=%d\n", st[PRI], tok[PRI], creates);
#if !FAILOVER
    outcomes_kept();
#endif
    faults = 0;
    if
    :: st[PRI] == INFLIGHT -> assert(!busy[tok[PRI]]); exp[PRI] = 1
    :: else
    fi;
    run Owner(OWNERS)
  }
  (finished == OWNERS + 1);
  assert(st[PRI] != INFLIGHT)
}

init {
  atomic {
    byte i;
    /* the bit fields above hold tokens up to 7 and counters up to 3 */
    assert(OWNERS >= 1 && OWNERS <= 3 && ATTEMPTS >= 1 && NT <= MAXT && MAXPOLL <= 2);
    i = 0;
    do
    :: i < OWNERS -> run Owner(i); i++
    :: i == OWNERS -> break
    od;
    i = 0;
    run Journal(0);
#if SPREAD
    run Journal(1);
#endif
#if FAILOVER
    run Failover();
#else
    failover_over = 1;
#endif
#if OUTAGE
    run Outage();
#if LOCAL_MODE
    run Prober(0, M_LOCAL);
#else
    run Prober(0, M_CLOSED);
#endif
#if SPREAD
    run Prober(1, M_CLOSED);
#endif
#else
    outage_over = 1;
#endif
    run Late()
  }
}

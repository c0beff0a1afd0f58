/* A QEMU TCG plugin counting the guest instructions a qemu-user run executes.
 *
 * Built by insn_count.py (`gcc -O2 -shared -fPIC`) and loaded with
 *     qemu-aarch64 -plugin libinsncount.so,out=/path/count.txt ...
 * At exit it writes "instructions <n>\nthreads <t>\n" to `out` (or, without `out`, prints it
 * with qemu_plugin_outs, shown under `-d plugin`), so the count never mixes with the guest's output.
 *
 * Debian's qemu 7.2 ships no qemu-plugin.h: these are the plugin API version 1 prototypes,
 * declared by hand (version 2 removed the inline exec callbacks used here).
 *
 * Threads: the count is an inline add on one shared counter: exact, and cheap (no helper call
 * per block), for a single-threaded guest. Each guest thread runs on its own host thread, so a
 * second thread would race on it (lost updates); atomic adds would fix that but not the real
 * problem, that thread pools spin while they wait and a spinning thread's instruction count is
 * timing, not work. So counting runs pin the pools to one thread (insn_count.py sets
 * TVM_NUM_THREADS=1 and friends), and the plugin reports how many guest threads ever ran
 * (vCPU init callbacks) so that the caller can refuse a count a second thread made inexact.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

typedef uint64_t qemu_plugin_id_t;
struct qemu_plugin_tb;
enum { QEMU_PLUGIN_INLINE_ADD_U64 = 0 };

void qemu_plugin_register_vcpu_init_cb(qemu_plugin_id_t, void (*)(qemu_plugin_id_t, unsigned int));
void qemu_plugin_register_vcpu_tb_trans_cb(qemu_plugin_id_t, void (*)(qemu_plugin_id_t, struct qemu_plugin_tb *));
void qemu_plugin_register_vcpu_tb_exec_inline(struct qemu_plugin_tb *, int, void *, uint64_t);
size_t qemu_plugin_tb_n_insns(const struct qemu_plugin_tb *);
void qemu_plugin_register_atexit_cb(qemu_plugin_id_t, void (*)(qemu_plugin_id_t, void *), void *);
void qemu_plugin_outs(const char *);

#define EXPORT __attribute__((visibility("default")))
EXPORT int qemu_plugin_version = 1;

static uint64_t instructions;
static unsigned int threads;
static char out_path[4096];

static void on_vcpu_init(qemu_plugin_id_t id, unsigned int vcpu) {
    (void)id, (void)vcpu;
    __atomic_fetch_add(&threads, 1, __ATOMIC_RELAXED); /* threads may start concurrently */
}

/* At translation time: add the block's length to the counter each time the block runs. */
static void on_translate(qemu_plugin_id_t id, struct qemu_plugin_tb *tb) {
    (void)id;
    qemu_plugin_register_vcpu_tb_exec_inline(tb, QEMU_PLUGIN_INLINE_ADD_U64, &instructions, qemu_plugin_tb_n_insns(tb));
}

static void on_exit(qemu_plugin_id_t id, void *unused) {
    (void)id, (void)unused;
    char line[96];
    snprintf(line, sizeof line, "instructions %llu\nthreads %u\n", (unsigned long long)instructions, threads);
    if (!out_path[0]) {
        qemu_plugin_outs(line);
        return;
    }
    FILE *out = fopen(out_path, "w");
    if (out == NULL || fputs(line, out) < 0 || fclose(out) != 0)
        qemu_plugin_outs("insn_count: cannot write the count file\n"); /* the caller sees no file */
}

EXPORT int qemu_plugin_install(qemu_plugin_id_t id, const void *info, int argc, char **argv) {
    (void)info;
    for (int i = 0; i < argc; i++) {
        if (strncmp(argv[i], "out=", 4) != 0 || strlen(argv[i] + 4) >= sizeof out_path) {
            qemu_plugin_outs("insn_count: the only argument is out=PATH\n");
            return -1; /* qemu refuses to start: better than a run whose count is lost */
        }
        strcpy(out_path, argv[i] + 4);
    }
    qemu_plugin_register_vcpu_init_cb(id, on_vcpu_init);
    qemu_plugin_register_vcpu_tb_trans_cb(id, on_translate);
    qemu_plugin_register_atexit_cb(id, on_exit, NULL);
    return 0;
}

/** The pool moved to common/ so that the replica's data server (replica/, a layer below) shares it. */
export * from '../../common/buffer-pool.js';

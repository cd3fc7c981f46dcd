/** Moved to common/ (the pool runs thin_dump too); kept so engine-side imports stay short. */
export * from '../common/command.js';

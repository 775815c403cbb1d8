/* placeholder: the console's script (written by the front-end work) */
